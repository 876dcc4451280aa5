//! `p11kms key` and `p11kms alias`: the key and alias operations.

use super::args::{AliasCmd, KeyCmd};
use super::output::{date, metadata_text, Empty, Out};
use super::paging;
use crate::error::{KmsError, Result};
use crate::kms::types::*;
use crate::kms::{AwsEnum, Forms, Kms};

fn parse_tags(pairs: &[String]) -> Result<Option<Vec<Tag>>> {
    if pairs.is_empty() {
        return Ok(None);
    }
    pairs
        .iter()
        .map(|p| {
            p.split_once('=')
                .map(|(k, v)| Tag {
                    tag_key: k.to_owned(),
                    tag_value: v.to_owned(),
                })
                .ok_or_else(|| KmsError::validation(format!("tag {p:?} is not KEY=VALUE")))
        })
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

/// A policy document from a file (bounded: a key policy is at most 32 KB).
fn read_policy(path: &std::path::Path) -> Result<String> {
    let max = crate::kms::PolicyDocument::MAX_BYTES;
    let bytes = super::input::read_bounded(Some(path), max + 1)?;
    if bytes.len() > max {
        return Err(KmsError::validation(format!(
            "{} is over {max} bytes: a key policy is at most 32 KB",
            path.display()
        )));
    }
    String::from_utf8(bytes.to_vec())
        .map_err(|_| KmsError::validation(format!("{} is not UTF-8 text", path.display())))
}

fn key_req(key: String) -> KeyIdRequest {
    KeyIdRequest {
        key_id: Some(key.into()),
        grant_tokens: None,
    }
}

pub(super) fn key(kms: &Kms, out: &Out, cmd: KeyCmd) -> Result<()> {
    match cmd {
        KeyCmd::Create {
            description,
            spec,
            usage,
            tags,
            policy,
            multi_region,
        } => {
            let r = kms.create_key(CreateKeyRequest {
                description,
                key_spec: spec,
                key_usage: usage,
                tags: parse_tags(&tags)?,
                policy: policy.as_deref().map(read_policy).transpose()?,
                multi_region: multi_region.then_some(true),
                ..Default::default()
            })?;
            out.made_key(&r.key_metadata.arn);
            out.emit(&r, &metadata_text(&r.key_metadata))
        }
        KeyCmd::Replicate {
            key,
            region,
            description,
            tags,
            policy,
        } => {
            let r = kms.replicate_key(
                ReplicateKeyRequest {
                    key_id: Some(key.into()),
                    replica_region: Some(region),
                    description,
                    tags: parse_tags(&tags)?,
                    policy: policy.as_deref().map(read_policy).transpose()?,
                    ..Default::default()
                },
                None,
            )?;
            out.made_key(&r.replica_key_metadata.arn);
            out.emit(&r, &metadata_text(&r.replica_key_metadata))
        }
        KeyCmd::UpdatePrimary { key, region } => {
            kms.update_primary_region(UpdatePrimaryRegionRequest {
                key_id: Some(key.clone().into()),
                primary_region: Some(region.clone()),
            })?;
            out.emit(
                &Empty {},
                &format!("The primary key of {key} is now the one in {region}."),
            )
        }
        KeyCmd::Policy { key } => {
            let r = kms.get_key_policy(GetKeyPolicyRequest {
                key_id: Some(key.into()),
                policy_name: None,
            })?;
            let text = format!("{}\n", r.policy);
            out.emit(&r, &text)
        }
        KeyCmd::PutPolicy { key, file } => {
            kms.put_key_policy(
                PutKeyPolicyRequest {
                    key_id: Some(key.clone().into()),
                    policy_name: None,
                    policy: Some(read_policy(&file)?),
                    bypass_policy_lockout_safety_check: None,
                },
                None,
            )?;
            out.emit(&Empty {}, &format!("Put the key policy of {key}."))
        }
        KeyCmd::List { limit, marker } => {
            let r = match limit {
                Some(_) => kms.list_keys(ListRequest {
                    scope: None,
                    limit,
                    marker,
                    key_id: None,
                })?,
                None => paging::all_keys(kms, marker)?,
            };
            let mut t: String = r
                .keys
                .iter()
                .map(|k| format!("{}\t{}\n", k.key_id, k.key_arn))
                .collect();
            if let Some(m) = r.next_marker.as_deref().filter(|_| r.truncated) {
                // On stderr so that stdout stays one key per line.
                eprintln!("(more keys: continue with --marker {m})");
            }
            if t.is_empty() {
                t = "No keys.\n".into();
            }
            out.emit(&r, &t)
        }
        KeyCmd::Describe { key } => {
            let r = kms.describe_key(key_req(key))?;
            out.emit(&r, &metadata_text(&r.key_metadata))
        }
        KeyCmd::Enable { key } => {
            kms.enable_key(key_req(key.clone()))?;
            out.emit(&Empty {}, &format!("Enabled {key}."))
        }
        KeyCmd::Disable { key } => {
            kms.disable_key(key_req(key.clone()))?;
            out.emit(&Empty {}, &format!("Disabled {key}."))
        }
        KeyCmd::ScheduleDeletion { key, days } => {
            let r = kms.schedule_key_deletion(ScheduleKeyDeletionRequest {
                key_id: Some(key.into()),
                pending_window_in_days: days,
            })?;
            let t = format!(
                "KeyId:        {}\nKeyState:     {}\nDeletionDate: {} ({} days)\n",
                r.key_id,
                r.key_state,
                date(r.deletion_date),
                r.pending_window_in_days
            );
            out.emit(&r, &t)
        }
        KeyCmd::CancelDeletion { key } => {
            let r = kms.cancel_key_deletion(key_req(key))?;
            let t = format!(
                "Cancelled the deletion of {}; it is now Disabled (`p11kms key enable` to use it again).",
                r.key_id
            );
            out.emit(&r, &t)
        }
        KeyCmd::Rotate { key } => {
            // Key ids and ARNs only (no aliases), as at AWS.
            let id = kms.resolve_key_id(&key.clone().into(), Forms::KeyOnly)?;
            kms.rotate_key_on_demand(key_req(key))?;
            kms.complete_rotation(id)?;
            // Another process's upkeep may have claimed it: wait for it to finish there.
            let until = std::time::Instant::now() + std::time::Duration::from_secs(15);
            while kms.key_record(id)?.on_demand_rotation_ms.is_some()
                && std::time::Instant::now() < until
            {
                std::thread::sleep(std::time::Duration::from_millis(250));
                kms.refresh()?;
            }
            let r = kms.describe_key(key_req(id.to_string()))?;
            let t = format!(
                "Rotated {}; current key material: {}\n",
                r.key_metadata.arn,
                r.key_metadata
                    .current_key_material_id
                    .as_deref()
                    .unwrap_or("(in progress)")
            );
            out.emit(&r, &t)
        }
        KeyCmd::RotationStatus { key } => {
            let r = kms.get_key_rotation_status(key_req(key))?;
            let mut t = format!(
                "KeyId:              {}\nKeyRotationEnabled: {}\n",
                r.key_id, r.key_rotation_enabled
            );
            if let Some(p) = r.rotation_period_in_days {
                t.push_str(&format!("RotationPeriod:     {p} days\n"));
            }
            if let Some(d) = r.next_rotation_date {
                t.push_str(&format!("NextRotationDate:   {}\n", date(d)));
            }
            if let Some(d) = r.on_demand_rotation_start_date {
                t.push_str(&format!(
                    "OnDemandRotation:   in progress since {}\n",
                    date(d)
                ));
            }
            out.emit(&r, &t)
        }
        KeyCmd::Rotations { key } => {
            let mut all = Vec::new();
            let mut marker = None;
            loop {
                let page = kms.list_key_rotations(ListKeyRotationsRequest {
                    key_id: Some(key.clone().into()),
                    include_key_material: Some("ALL_KEY_MATERIAL".into()),
                    limit: Some(1000),
                    marker: marker.take(),
                })?;
                all.extend(page.rotations);
                match page.next_marker.filter(|_| page.truncated) {
                    Some(m) => marker = Some(m),
                    None => break,
                }
            }
            let t: String = all
                .iter()
                .map(|r| {
                    format!(
                        "{}\t{}\t{}\t{}\n",
                        r.key_material_id,
                        r.key_material_state,
                        r.rotation_type.map_or("-", |k| k.as_str()),
                        r.rotation_date.map_or_else(|| "-".to_string(), date)
                    )
                })
                .collect();
            let r = ListKeyRotationsResponse {
                rotations: all,
                next_marker: None,
                truncated: false,
            };
            out.emit(&r, &t)
        }
        KeyCmd::EnableRotation { key, period } => {
            kms.enable_key_rotation(EnableKeyRotationRequest {
                key_id: Some(key.clone().into()),
                rotation_period_in_days: period,
            })?;
            out.emit(&Empty {}, &format!("Enabled automatic rotation of {key}."))
        }
        KeyCmd::DisableRotation { key } => {
            kms.disable_key_rotation(key_req(key.clone()))?;
            out.emit(&Empty {}, &format!("Disabled automatic rotation of {key}."))
        }
    }
}

fn alias_req(name: String, key: Option<String>) -> AliasRequest {
    AliasRequest {
        scope: None,
        alias_name: Some(name),
        target_key_id: key.map(Into::into),
    }
}

pub(super) fn alias(kms: &Kms, out: &Out, cmd: AliasCmd) -> Result<()> {
    match cmd {
        AliasCmd::Create { name, key } => {
            kms.create_alias(alias_req(name.clone(), Some(key.clone())))?;
            out.emit(&Empty {}, &format!("Created {name} -> {key}."))
        }
        AliasCmd::Update { name, key } => {
            kms.update_alias(alias_req(name.clone(), Some(key.clone())))?;
            out.emit(&Empty {}, &format!("Updated {name} -> {key}."))
        }
        AliasCmd::Delete { name } => {
            kms.delete_alias(alias_req(name.clone(), None))?;
            out.emit(&Empty {}, &format!("Deleted {name}."))
        }
        AliasCmd::List { key, limit, marker } => {
            let r = match limit {
                Some(_) => kms.list_aliases(ListRequest {
                    scope: None,
                    limit,
                    marker,
                    key_id: key.map(Into::into),
                })?,
                None => paging::all_aliases(kms, key, marker)?,
            };
            let mut t: String = r
                .aliases
                .iter()
                .map(|a| format!("{}\t{}\n", a.alias_name, a.target_key_id))
                .collect();
            if let Some(m) = r.next_marker.as_deref().filter(|_| r.truncated) {
                eprintln!("(more aliases: continue with --marker {m})");
            }
            if t.is_empty() {
                t = "No aliases.\n".into();
            }
            out.emit(&r, &t)
        }
    }
}
