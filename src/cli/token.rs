//! `p11kms token`: set up the token (init), describe it (info) and one round of upkeep (sweep).

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::output::Out;
use super::paging;
use crate::config::{Config, ConfigSource, EmbeddedToken};
use crate::error::{KmsError, Result};
use crate::hsm::Capabilities;
use crate::kms::domain::DataKeyPairSpec;
use crate::kms::types::KeyIdRequest;
use crate::kms::{AwsEnum, KeySpec, KeyUsage, Kms};

/// A mechanism's flags as words.
fn mechanism_flags(m: &crate::hsm::MechanismSupport) -> (&'static str, String) {
    let flags: Vec<&str> = [
        (m.generate, "generate"),
        (m.generate_key_pair, "generate-key-pair"),
        (m.encrypt, "encrypt"),
        (m.decrypt, "decrypt"),
        (m.sign, "sign"),
        (m.verify, "verify"),
        (m.wrap, "wrap"),
        (m.unwrap, "unwrap"),
        (m.derive, "derive"),
    ]
    .iter()
    .filter(|(on, _)| *on)
    .map(|(_, name)| *name)
    .collect();
    let text = if !m.present {
        "absent".to_owned()
    } else if flags.is_empty() {
        "present (no relevant flags)".to_owned()
    } else {
        flags.join(" ")
    };
    (m.name, text)
}

pub(super) fn token_init(config: &Config, so_pin_file: Option<&Path>, out: &Out) -> Result<()> {
    let dir = match (&config.source, so_pin_file) {
        (ConfigSource::Embedded(dir), None) => dir,
        (ConfigSource::Embedded(_), Some(_)) => {
            return Err(KmsError::config(
                "--so-pin-file initialises the token a configuration file names; without \
                 --config or P11KMS_CONFIG, `token init` sets up the embedded token itself",
            ))
        }
        (ConfigSource::File(path), None) => {
            return Err(KmsError::config(format!(
                "`token init` only creates the embedded SoftHSMv2 token; {} names a token of \
                 its own: initialise real HSM tokens with the vendor's tools (software tokens \
                 such as Kryoptic: pass --so-pin-file)",
                path.display()
            )))
        }
        (ConfigSource::File(_), Some(so_pin_file)) => {
            return token_init_configured(config, so_pin_file, out)
        }
    };
    let outcome = crate::setup::init_embedded(dir)?;
    let mut text = format!("State directory: {}\n", dir.display());
    text.push_str(if outcome.files_created {
        "Created the state files (SoftHSM config, PINs, dev credential).\n"
    } else {
        "State files already exist.\n"
    });
    text.push_str(&if outcome.token_created {
        format!("Initialised token {:?}.\n", EmbeddedToken::LABEL)
    } else {
        format!("Token {:?} already exists.\n", EmbeddedToken::LABEL)
    });
    out.emit(&outcome, &text)
}

/// `token init --so-pin-file`: C_InitToken + C_InitPIN on the configured module's first free
/// slot, with the configured label and user PIN. Idempotent: an existing token is left alone.
fn token_init_configured(config: &Config, so_pin_file: &Path, out: &Out) -> Result<()> {
    let crate::config::TokenSelector::Label(label) = &config.token.selector else {
        return Err(KmsError::config(
            "`token init` needs the token named by token.label, not token.slot",
        ));
    };
    let so_pin = crate::config::SecretSource::File(so_pin_file.to_path_buf()).read()?;
    let user_pin = config.token.pin.read()?;
    // The module reads its environment (KRYOPTIC_CONF, SOFTHSM2_CONF) in C_Initialize.
    config.token.export_env();
    let token_created = crate::hsm::init_token(
        &config.token.module,
        label,
        so_pin.expose(),
        user_pin.expose(),
    )?;
    let outcome = crate::setup::InitOutcome {
        files_created: false,
        token_created,
    };
    let text = if token_created {
        format!(
            "Initialised token {label:?} in {}.\n",
            config.token.module.display()
        )
    } else {
        format!("Token {label:?} already exists.\n")
    };
    out.emit(&outcome, &text)
}

/// A KeySpec and KeyUsage that AWS allows, and whether this token offers it.
#[derive(Serialize)]
struct OfferedKeySpec {
    key_spec: KeySpec,
    key_usage: KeyUsage,
    offered: bool,
    /// Why not (what the token lacks), as CreateKey would answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    why_not: Option<String>,
}

/// A KeyPairSpec of GenerateDataKeyPair, and whether this token offers it.
#[derive(Serialize)]
struct OfferedPairSpec {
    key_pair_spec: DataKeyPairSpec,
    offered: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    why_not: Option<String>,
}

fn offered_text(why_not: &Option<String>) -> String {
    match why_not {
        None => "offered".to_owned(),
        Some(why) => format!("not offered: {why}"),
    }
}

#[derive(Serialize)]
struct TokenInfo<'a> {
    config_source: &'static str,
    config_path: &'a Path,
    token: &'a crate::hsm::TokenDescription,
    capabilities: &'a crate::hsm::Capabilities,
    kdf: Option<&'static str>,
    in_token_sealing_possible: bool,
    custody: crate::kms::Custody,
    quirks: crate::hsm::Quirks,
    key_specs: Vec<OfferedKeySpec>,
    data_key_pair_specs: Vec<OfferedPairSpec>,
    keys: usize,
    aliases: usize,
}

pub(super) fn token_info(config: &Config, kms: &Kms, out: &Out) -> Result<()> {
    let (source, path) = match &config.source {
        ConfigSource::Embedded(dir) => ("embedded", dir.as_path()),
        ConfigSource::File(path) => ("file", path.as_path()),
    };
    let token = kms.token();
    let caps = token.capabilities();
    let keys = paging::all_keys(kms, None)?.keys.len();
    let aliases = paging::all_aliases(kms, None, None)?.aliases.len();
    let info = TokenInfo {
        config_source: source,
        config_path: path,
        token: token.description(),
        capabilities: caps,
        kdf: caps.kdf.map(|k| k.name()),
        in_token_sealing_possible: caps.in_token_sealing(),
        custody: kms.custody(),
        quirks: token.quirks(),
        key_specs: kms
            .offered_key_specs()
            .into_iter()
            .map(|(key_spec, key_usage, why_not)| OfferedKeySpec {
                key_spec,
                key_usage,
                offered: why_not.is_none(),
                why_not,
            })
            .collect(),
        data_key_pair_specs: kms
            .offered_data_key_pair_specs()
            .into_iter()
            .map(|(key_pair_spec, why_not)| OfferedPairSpec {
                key_pair_spec,
                offered: why_not.is_none(),
                why_not,
            })
            .collect(),
        keys,
        aliases,
    };
    let d = info.token;
    let mut t = String::new();
    t.push_str(&match &config.source {
        ConfigSource::Embedded(dir) => format!(
            "Config:        embedded token, state dir {}\n",
            dir.display()
        ),
        ConfigSource::File(p) => format!("Config:        {}\n", p.display()),
    });
    t.push_str(&format!(
        "Module:        {}\nLibrary:       {} {} (Cryptoki {})\nSlot:          {}\nLabel:         {}\nManufacturer:  {}\nModel:         {}\nSerial:        {}\n",
        d.module, d.library, d.library_version, d.cryptoki_version, d.slot, d.label,
        d.manufacturer, d.model, d.serial
    ));
    t.push_str(&format!(
        "RNG:           {}\nMechanisms:\n",
        yes_no(caps.rng)
    ));
    for (name, flags) in [
        mechanism_flags(&caps.aes_key_gen),
        mechanism_flags(&caps.generic_secret_key_gen),
        mechanism_flags(&caps.aes_gcm),
        mechanism_flags(&caps.aes_cbc_encrypt_data),
        mechanism_flags(&caps.sp800_108_counter_kdf),
        mechanism_flags(&caps.aes_cmac),
    ]
    .into_iter()
    .chain(asymmetric_mechanisms(caps))
    {
        t.push_str(&format!("  {name:<28} {flags}\n"));
    }
    t.push_str("Key specs (CreateKey):\n");
    for o in &info.key_specs {
        t.push_str(&format!(
            "  {:<22} {:<20} {}\n",
            o.key_spec.as_str(),
            o.key_usage.as_str(),
            offered_text(&o.why_not)
        ));
    }
    t.push_str("Data key pair specs (GenerateDataKeyPair):\n");
    for o in &info.data_key_pair_specs {
        t.push_str(&format!(
            "  {:<22} {}\n",
            o.key_pair_spec.as_str(),
            offered_text(&o.why_not)
        ));
    }
    let c = &info.custody;
    let dt = &c.derive_template;
    t.push_str(&format!(
        "KDF:           {}\nIn-token sealing (C_GenerateKey + C_WrapKey with CKM_AES_GCM): {}\n\
         Required:      {}\nDerive template: {}\nCustody (path; where plaintext exists):\n",
        info.kdf.unwrap_or("none"),
        match (&c.in_token_sealing_missing, c.data_keys_without_plaintext) {
            (None, crate::kms::SealingPath::Token) => "used".to_string(),
            (None, crate::kms::SealingPath::Host) => {
                "possible, but off (sealing = \"host\")".to_string()
            }
            (Some(why), _) => format!("not possible: {why}"),
        },
        match (c.in_token_sealing_required, c.data_keys_without_plaintext) {
            (false, _) => "no",
            (true, crate::kms::SealingPath::Token) => "yes (met)",
            (true, crate::kms::SealingPath::Host) =>
                "yes, NOT MET: `p11kms serve` refuses to start",
        },
        match (dt.enforced, dt.rewritable, dt.accepted) {
            (true, true, _) =>
                "CKA_DERIVE_TEMPLATE enforced and set on new CMKs; a PIN holder \
                                can still rewrite it (CMKs are modifiable)",
            (true, false, _) => "CKA_DERIVE_TEMPLATE enforced and set on new CMKs",
            (false, _, true) if dt.exposed_derivation_without_it => {
                "CKA_DERIVE_TEMPLATE accepted but not enforced: a PIN holder can derive a \
                 readable copy of an epoch key"
            }
            (false, _, false) if dt.exposed_derivation_without_it => {
                "CKA_DERIVE_TEMPLATE not supported: a PIN holder can derive a readable copy \
                 of an epoch key"
            }
            (false, _, _) =>
                "CKA_DERIVE_TEMPLATE not enforced (derived keys come out \
                              sensitive anyway)",
        },
    ));
    for line in c.lines() {
        t.push_str(&format!("  {line}\n"));
    }
    t.push_str(&format!(
        "Keys:          {keys}\nAliases:       {aliases}\n"
    ));
    out.emit(&info, &t)
}

/// The mechanisms of the asymmetric and HMAC key families, with their flags.
fn asymmetric_mechanisms(caps: &Capabilities) -> Vec<(&'static str, String)> {
    let m = &caps.asymmetric;
    [
        &m.rsa_key_pair_gen,
        &m.rsa_pkcs,
        &m.rsa_pkcs_pss,
        &m.rsa_pkcs_oaep,
        &m.ec_key_pair_gen,
        &m.ecdsa,
        &m.ecdh1_derive,
        &m.ec_edwards_key_pair_gen,
        &m.eddsa,
    ]
    .into_iter()
    .chain(m.hmac.iter())
    .map(mechanism_flags)
    .collect()
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

#[derive(Serialize)]
struct SweepReport {
    destroyed_keys: Vec<String>,
    orphan_cmks_waiting: usize,
}

pub(super) fn token_sweep(kms: &Kms, out: &Out) -> Result<()> {
    // maintain() reports nothing, so what it will destroy is worked out first: keys pending
    // deletion whose date has passed, then checked against what is left afterwards.
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let mut due = Vec::new();
    for k in paging::all_keys(kms, None)?.keys {
        let m = kms
            .describe_key(KeyIdRequest {
                key_id: Some(k.key_id.clone().into()),
                ..Default::default()
            })?
            .key_metadata;
        if m.key_state == crate::kms::KeyState::PendingDeletion
            && m.deletion_date.is_some_and(|d| d <= now)
        {
            due.push(m.arn);
        }
    }
    kms.maintain()?;
    let left: Vec<String> = paging::all_keys(kms, None)?
        .keys
        .into_iter()
        .map(|k| k.key_arn)
        .collect();
    let destroyed_keys: Vec<String> = due.into_iter().filter(|a| !left.contains(a)).collect();
    // With an infinite grace this only counts unreferenced CMKs; maintain() destroys them once
    // they have stayed unreferenced for its grace period within one process.
    let (_, orphan_cmks_waiting) = kms.sweep_orphan_cmks_after(Duration::MAX)?;
    let report = SweepReport {
        destroyed_keys,
        orphan_cmks_waiting,
    };
    let mut t = String::from("Refreshed metadata from the token.\n");
    t.push_str(&format!(
        "Destroyed {} key(s) past their deletion date.\n",
        report.destroyed_keys.len()
    ));
    for a in &report.destroyed_keys {
        t.push_str(&format!("  {a}\n"));
    }
    t.push_str(&format!(
        "Unreferenced key material (left by interrupted CreateKey calls): {}{}\n",
        report.orphan_cmks_waiting,
        if report.orphan_cmks_waiting > 0 {
            " (destroyed only after a grace period, by a long-running process such as the server)"
        } else {
            ""
        }
    ));
    out.emit(&report, &t)
}
