//! `p11kms grant`: CreateGrant, ListGrants, RetireGrant and RevokeGrant. The CLI acts with the
//! token's PIN, so it is not authorized per principal: grants it creates are issued by the
//! configured account.

use std::collections::BTreeMap;

use super::args::GrantCmd;
use super::output::{date, Empty, Out};
use super::paging;
use crate::error::{KmsError, Result};
use crate::kms::types::*;
use crate::kms::{AwsEnum, Kms};

/// `KEY=VALUE` pairs of a constraint (`None`: none given).
fn pairs(v: &[String]) -> Result<Option<BTreeMap<String, String>>> {
    if v.is_empty() {
        return Ok(None);
    }
    let mut map = BTreeMap::new();
    for p in v {
        let (k, val) = p.split_once('=').ok_or_else(|| {
            KmsError::validation(format!("constraint pair {p:?} is not KEY=VALUE"))
        })?;
        if map.insert(k.to_owned(), val.to_owned()).is_some() {
            return Err(KmsError::validation(format!(
                "constraint key {k:?} is given twice"
            )));
        }
    }
    Ok(Some(map))
}

fn entry_text(g: &GrantListEntry) -> String {
    let ops: Vec<&str> = g.operations.iter().map(|o| o.as_str()).collect();
    let mut t = format!(
        "{}\t{}\t{}\t{}",
        g.grant_id,
        g.grantee_principal,
        ops.join(","),
        date(g.creation_date)
    );
    if let Some(n) = &g.name {
        t.push_str(&format!("\tname={n}"));
    }
    if let Some(c) = &g.constraints {
        let (kind, m) = match (&c.encryption_context_equals, &c.encryption_context_subset) {
            (Some(m), _) => ("equals", m),
            (None, Some(m)) => ("subset", m),
            (None, None) => ("", &BTreeMap::new()),
        };
        let m: Vec<String> = m.iter().map(|(k, v)| format!("{k}={v}")).collect();
        t.push_str(&format!("\tcontext-{kind}={}", m.join(",")));
    }
    t.push('\n');
    t
}

pub(super) fn grant(kms: &Kms, out: &Out, cmd: GrantCmd) -> Result<()> {
    match cmd {
        GrantCmd::Create {
            key,
            grantee,
            operations,
            retiring,
            name,
            context_equals,
            context_subset,
        } => {
            let equals = pairs(&context_equals)?;
            let subset = pairs(&context_subset)?;
            let constraints = (equals.is_some() || subset.is_some()).then_some(GrantConstraints {
                encryption_context_equals: equals,
                encryption_context_subset: subset,
                source_arn: None,
            });
            let account = kms.scope().account.clone();
            let r = kms.create_grant(
                CreateGrantRequest {
                    key_id: Some(key.into()),
                    grantee_principal: Some(grantee),
                    retiring_principal: retiring,
                    operations: Some(operations),
                    constraints,
                    name,
                    ..Default::default()
                },
                &account,
            )?;
            let t = format!(
                "GrantId:    {}\nGrantToken: {}\n",
                r.grant_id, r.grant_token
            );
            out.emit(&r, &t)
        }
        GrantCmd::List {
            key,
            grantee,
            grant_id,
            limit,
            marker,
        } => {
            let req = ListGrantsRequest {
                limit,
                marker,
                key_id: Some(key.into()),
                grant_id,
                grantee_principal: grantee,
                grantee_service_principal: None,
            };
            let r = match limit {
                Some(_) => kms.list_grants(req)?,
                None => paging::all_grants(kms, req)?,
            };
            let mut t: String = r.grants.iter().map(entry_text).collect();
            if let Some(m) = r.next_marker.as_deref().filter(|_| r.truncated) {
                eprintln!("(more grants: continue with --marker {m})");
            }
            if t.is_empty() {
                t = "No grants.\n".into();
            }
            out.emit(&r, &t)
        }
        GrantCmd::Retire {
            token,
            key,
            grant_id,
        } => {
            let what = match (&token, &grant_id) {
                (Some(_), _) => "the grant of that token".to_owned(),
                (None, Some(g)) => format!("grant {g}"),
                (None, None) => "nothing".to_owned(),
            };
            kms.retire_grant(RetireGrantRequest {
                grant_token: token,
                key_id: key.map(Into::into),
                grant_id,
                dry_run: None,
            })?;
            out.emit(&Empty {}, &format!("Retired {what}."))
        }
        GrantCmd::Revoke { key, grant_id } => {
            kms.revoke_grant(RevokeGrantRequest {
                key_id: Some(key.into()),
                grant_id: Some(grant_id.clone()),
                dry_run: None,
            })?;
            out.emit(&Empty {}, &format!("Revoked grant {grant_id}."))
        }
    }
}
