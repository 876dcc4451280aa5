//! `p11kms custody report` and `custody verify`: for an auditor, per key the token
//! attributes that prove custody, the sealing path per operation and the token's model and
//! firmware, MACed by the token's audit key (HMAC-SHA256 over the canonical JSON of
//! `report`), so that a saved report can be checked later against the same token.

use std::path::Path;

use serde_json::{json, Value};

use super::output::Out;
use crate::error::{KmsError, Result};
use crate::kms::Kms;

/// Labels of the backing keys a report covers: KMS keys' and the audit key's.
const PREFIXES: [&str; 2] = ["p11kms:cmk:", "p11kms:audit:"];

fn canonical(report: &Value) -> Vec<u8> {
    serde_json::to_vec(report).unwrap_or_default()
}

/// Prints the signed report (JSON with `--json`, else a summary).
pub(super) fn report(kms: &Kms, out: &Out) -> Result<()> {
    let token = kms.token();
    let mut keys = Vec::new();
    for prefix in PREFIXES {
        for f in token.custody_facts(prefix).map_err(KmsError::from)? {
            let (key_id, version) = crate::kms::records::parse_cmk_label(&f.label)
                .map(|(id, v)| (Some(id.to_string()), Some(v)))
                .unwrap_or((None, None));
            keys.push(json!({
                "keyId": key_id,
                "version": version,
                "token": f,
            }));
        }
    }
    let d = token.description();
    let report = json!({
        "version": 1,
        "generated": crate::audit::event_time(time::OffsetDateTime::now_utc()),
        "token": d,
        "sealing": kms.custody(),
        "keys": keys,
    });
    let key = token.audit_key(true).map_err(KmsError::from)?;
    let mac = key.mac(&canonical(&report)).map_err(KmsError::from)?;
    let signed = json!({
        "report": report,
        "mac": hex::encode(mac),
        "scheme": crate::audit::MAC_SCHEME,
        "key": crate::hsm::AUDIT_KEY_LABEL,
    });
    if out.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&signed).unwrap_or_default()
        );
        return Ok(());
    }
    let mut text = format!(
        "Token {:?}: {} {} (firmware {}, hardware {}), module {}\n",
        d.label, d.manufacturer, d.model, d.firmware_version, d.hardware_version, d.module
    );
    for line in kms.custody().lines() {
        text.push_str(&format!("  {line}\n"));
    }
    for k in &keys {
        let t = &k["token"];
        text.push_str(&format!(
            "{}: {} local={} never_extractable={} always_sensitive={} sensitive={} extractable={} value_readable={}\n",
            t["label"].as_str().unwrap_or(""),
            t["key_type"].as_str().unwrap_or(""),
            t["local"],
            t["never_extractable"],
            t["always_sensitive"],
            t["attributes"]["sensitive"],
            t["attributes"]["extractable"],
            t["attributes"]["value_readable"],
        ));
    }
    text.push_str("(use --json for the report signed by the audit key)\n");
    print!("{text}");
    Ok(())
}

/// Checks a saved `custody report --json` against the token's audit key.
pub(super) fn verify(kms: &Kms, file: &Path, out: &Out) -> Result<()> {
    let bytes = std::fs::read(file)
        .map_err(|e| KmsError::io(format!("cannot read {}: {e}", file.display())))?;
    let v: Value = serde_json::from_slice(&bytes)
        .map_err(|_| KmsError::validation(format!("{} is not JSON", file.display())))?;
    let (Some(report), Some(mac)) = (
        v.get("report"),
        v.get("mac")
            .and_then(Value::as_str)
            .and_then(|m| hex::decode(m).ok()),
    ) else {
        return Err(KmsError::validation(
            "not a custody report (report and mac)",
        ));
    };
    let key = kms.token().audit_key(false).map_err(KmsError::from)?;
    if !key
        .verify(&canonical(report), &mac)
        .map_err(KmsError::from)?
    {
        return Err(KmsError::validation(format!(
            "{}: the custody report does not carry this token's audit key MAC: it was changed, \
             or made by another token",
            file.display()
        )));
    }
    out.emit(
        &json!({ "verified": true, "generated": report["generated"] }),
        &format!(
            "{}: verified (generated {})",
            file.display(),
            report["generated"].as_str().unwrap_or("?")
        ),
    )
}
