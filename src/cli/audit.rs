//! `p11kms audit verify`, and the audit records of the CLI's state-changing commands (the
//! same CloudTrail shape as the server's, built by `api::audit`; the identity is the local
//! operator, who holds the token PIN).

use std::path::PathBuf;

use serde_json::{json, Value};

use super::args::{AliasCmd, Configured, GrantCmd, KeyCmd, TokenCmd};
use super::output::Out;
use crate::audit::FileOutcome;
use crate::config::Config;
use crate::error::{KmsError, Result};
use crate::kms::{Forms, KeySelector, Kms};

/// The AWS operation a state-changing command is, and the members its record keeps (never
/// a grant token, a file's contents or a PIN). `None`: the command changes nothing.
pub(super) fn event(cmd: &Configured) -> Option<(&'static str, Value)> {
    Some(match cmd {
        Configured::Key(k) => match k {
            KeyCmd::Create {
                description,
                spec,
                usage,
                tags,
                ..
            } => (
                "CreateKey",
                json!({
                    "description": description,
                    "keySpec": spec.as_deref().unwrap_or("SYMMETRIC_DEFAULT"),
                    "keyUsage": usage.as_deref().unwrap_or("ENCRYPT_DECRYPT"),
                    "tags": tags.iter().map(|t| t.split('=').next().unwrap_or("")).collect::<Vec<_>>(),
                }),
            ),
            KeyCmd::PutPolicy { key, .. } => (
                "PutKeyPolicy",
                json!({ "keyId": key, "policyName": "default" }),
            ),
            KeyCmd::Enable { key } => ("EnableKey", json!({ "keyId": key })),
            KeyCmd::Disable { key } => ("DisableKey", json!({ "keyId": key })),
            KeyCmd::ScheduleDeletion { key, days } => (
                "ScheduleKeyDeletion",
                json!({ "keyId": key, "pendingWindowInDays": days.unwrap_or(30) }),
            ),
            KeyCmd::CancelDeletion { key } => ("CancelKeyDeletion", json!({ "keyId": key })),
            KeyCmd::Rotate { key } => ("RotateKeyOnDemand", json!({ "keyId": key })),
            KeyCmd::EnableRotation { key, period } => (
                "EnableKeyRotation",
                json!({ "keyId": key, "rotationPeriodInDays": period.unwrap_or(365) }),
            ),
            KeyCmd::DisableRotation { key } => ("DisableKeyRotation", json!({ "keyId": key })),
            KeyCmd::Replicate {
                key, region, tags, ..
            } => (
                "ReplicateKey",
                json!({
                    "keyId": key,
                    "replicaRegion": region,
                    "tags": tags.iter().map(|t| t.split('=').next().unwrap_or("")).collect::<Vec<_>>(),
                }),
            ),
            KeyCmd::UpdatePrimary { key, region } => (
                "UpdatePrimaryRegion",
                json!({ "keyId": key, "primaryRegion": region }),
            ),
            _ => return None,
        },
        Configured::Alias(a) => match a {
            AliasCmd::Create { name, key } => (
                "CreateAlias",
                json!({ "aliasName": name, "targetKeyId": key }),
            ),
            AliasCmd::Update { name, key } => (
                "UpdateAlias",
                json!({ "aliasName": name, "targetKeyId": key }),
            ),
            AliasCmd::Delete { name } => ("DeleteAlias", json!({ "aliasName": name })),
            _ => return None,
        },
        Configured::Grant(g) => match g {
            GrantCmd::Create {
                key,
                grantee,
                operations,
                retiring,
                name,
                ..
            } => (
                "CreateGrant",
                json!({
                    "keyId": key,
                    "granteePrincipal": grantee,
                    "operations": operations,
                    "retiringPrincipal": retiring,
                    "name": name,
                }),
            ),
            // By token: the token is a secret and is not recorded.
            GrantCmd::Retire { key, grant_id, .. } => {
                ("RetireGrant", json!({ "keyId": key, "grantId": grant_id }))
            }
            GrantCmd::Revoke { key, grant_id } => {
                ("RevokeGrant", json!({ "keyId": key, "grantId": grant_id }))
            }
            _ => return None,
        },
        Configured::Token(TokenCmd::Sweep) => ("p11kms:TokenSweep", json!({})),
        Configured::Seed { file, .. } => ("p11kms:Seed", json!({ "file": file })),
        _ => return None,
    })
}

/// The ARNs of the keys a command was about, for its record's `resources`: the keys it made
/// (`made`), then those its `keyId` and `targetKeyId` name now (a name that no longer
/// resolves, e.g. after a failure, adds nothing).
fn resources(kms: &Kms, params: &Value, made: &[String]) -> Vec<String> {
    let mut arns = made.to_vec();
    for member in ["keyId", "targetKeyId"] {
        let Some(name) = params.get(member).and_then(Value::as_str) else {
            continue;
        };
        let named = KeySelector::Named(name.to_owned());
        if let Ok(id) = kms.resolve_key_id(&named, Forms::Any) {
            let arn = kms.scope().key_arn(&id);
            if !arns.contains(&arn) {
                arns.push(arn);
            }
        }
    }
    arns
}

/// Writes the record of a finished command (its error, if it failed). The trail is opened
/// for this one record: a stream of its own, closed at once.
pub(super) fn write(
    config: &Config,
    op: &str,
    params: Value,
    error: Option<&KmsError>,
    made: &[String],
) -> Result<()> {
    if !config.audit.enabled {
        return Ok(());
    }
    let kms = crate::app::open(config)?;
    let Some(log) = crate::audit::open(&config.audit, kms.token())? else {
        return Ok(());
    };
    let keys = resources(&kms, &params, made);
    // SAFETY of meaning, not memory: the operator is whoever can run this binary with the PIN.
    let uid = rustix::process::getuid().as_raw();
    let arn = format!("arn:aws:iam::{}:root", config.account);
    let message = error.map(|e| e.message().to_owned());
    let members = crate::api::audit::Members::of(&params);
    let record = crate::api::audit::record(&crate::api::audit::Event {
        op,
        time: time::OffsetDateTime::now_utc(),
        region: &config.region,
        account: &config.account,
        source: crate::api::audit::Source::Named(&format!("p11kms-cli (uid {uid})")),
        user_agent: concat!("p11kms-cli/", env!("CARGO_PKG_VERSION")),
        identity: Some(crate::api::audit::Identity {
            arn: &arn,
            access_key_id: "",
        }),
        request: members.as_ref(),
        response: None,
        error: error.map(|e| (e.aws_name(), message.as_deref().unwrap_or(""))),
        request_id: &uuid::Uuid::new_v4().to_string(),
        keys: &keys,
    })
    .map_err(|e| KmsError::io(e.to_string()))?;
    let written = log.record_blocking(record);
    log.close();
    written.map_err(|e| KmsError::io(e.to_string()))
}

/// `p11kms audit verify FILE...`: exit 0 when every file verifies and is closed, an error
/// naming the first line that breaks, and exit 2 when the files verify but one ends
/// without its closing checkpoint (a crash, or a truncation at a line boundary).
pub(super) fn verify(
    config: &Config,
    files: &[PathBuf],
    no_token: bool,
    out: &Out,
) -> Result<bool> {
    let token;
    let key = if no_token {
        None
    } else {
        token = crate::app::open_token(config, 1)?;
        Some(
            token
                .audit_key(false)
                .map_err(|e| KmsError::io(format!("cannot check MACs: {e}")))?,
        )
    };
    let reports = crate::audit::verify_files(files, key.as_ref());
    let mut text = String::new();
    let mut failed = None;
    let mut incomplete = false;
    for r in &reports {
        let p = r.path.display();
        match &r.outcome {
            FileOutcome::Verified => text.push_str(&format!(
                "{p}: verified: {} records, {} checkpoints{}\n",
                r.records,
                r.checkpoints,
                if r.macs_checked {
                    ""
                } else {
                    " (MACs not checked: --no-token)"
                }
            )),
            FileOutcome::Incomplete {
                why, sealed_seq, ..
            } => {
                incomplete = true;
                text.push_str(&format!(
                    "{p}: incomplete: {why}; {} records; sealed by a checkpoint up to seq {sealed_seq}\n",
                    r.records
                ));
            }
            FileOutcome::Failed { line, why, .. } => {
                failed.get_or_insert_with(|| format!("{p}: line {line}: {why}"));
                text.push_str(&format!("{p}: FAILED at line {line}: {why}\n"));
            }
        }
    }
    if out.json {
        println!("{}", serde_json::to_string(&reports).unwrap_or_default());
    } else {
        print!("{text}");
    }
    if let Some(f) = failed {
        return Err(KmsError::validation(format!(
            "the audit trail does not verify: {f}"
        )));
    }
    Ok(!incomplete)
}
