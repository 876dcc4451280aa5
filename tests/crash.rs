//! A process killed in the middle of a write leaves a store every process can still use.
//! Alone in its test binary, its tests one at a time: the zero-grace orphan sweep must not
//! race another test's CreateKey.

mod common;

use std::collections::HashSet;
use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use p11kms::kms::types::*;

fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// How one killed child ended.
#[derive(Debug, Default)]
struct Outcomes {
    /// Finished and printed its answer before the kill.
    completed: usize,
    /// Killed by the SIGKILL before it printed its answer: the kill interrupted it.
    interrupted: usize,
    /// Exited with an error of its own.
    failed: usize,
}

/// The command of child `i`.
fn command(i: u64, alias: &str, base: &str, spare: &str) -> Vec<String> {
    let target = if i % 2 == 0 { spare } else { base };
    match i % 3 {
        0 if i % 2 == 0 => vec!["key".into(), "create".into()],
        // A key pair: the private key first, then the record with the public key.
        0 => [
            "key",
            "create",
            "--spec",
            "ECC_NIST_P256",
            "--usage",
            "SIGN_VERIFY",
        ]
        .map(String::from)
        .to_vec(),
        1 => vec!["alias".into(), "update".into(), alias.into(), target.into()],
        _ => vec![
            "alias".into(),
            "create".into(),
            format!("alias/crash-new-{i}"),
            base.into(),
        ],
    }
}

/// Kills `p11kms` processes at spread-out moments of CreateKey and alias updates, then checks
/// that a freshly opened service sees a consistent store: every key usable, every alias
/// pointing at a key, and every CMK object either referenced or swept as an orphan.
#[test]
fn killed_writers_leave_a_consistent_store() {
    let _g = serial();
    let kms = common::kms();
    let base = common::new_key();
    let spare = common::new_key();
    let alias = format!("alias/crash-{}", &base[..8]);
    kms.create_alias(AliasRequest {
        scope: None,
        alias_name: Some(alias.clone()),
        target_key_id: Some(base.clone().into()),
    })
    .unwrap();

    // How long a command takes here, uninterrupted (the slowest kind): the kills are spread
    // over twice that, whatever the speed of the machine.
    let took: Vec<Duration> = (0..6u64)
        .map(|kind| {
            let args = command(kind + 300, &alias, &base, &spare);
            let t0 = Instant::now();
            let o = common::p11kms_cmd().args(&args).output().unwrap();
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            t0.elapsed()
        })
        .collect();
    let spread = took.iter().max().copied().unwrap_or_default() * 2;

    let mut outcomes = Outcomes::default();
    for i in 0..36u64 {
        let mut child = common::p11kms_cmd()
            .args(command(i, &alias, &base, &spare))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Spread the kill over start-up, the token write and the clean-up after it.
        std::thread::sleep(spread.mul_f64(((i * 37) % 250) as f64 / 250.0));
        let _ = child.kill();
        let status = child.wait().unwrap();
        let mut printed = String::new();
        let _ = child.stdout.take().unwrap().read_to_string(&mut printed);
        if !printed.is_empty() {
            outcomes.completed += 1;
        } else if status.signal() == Some(libc::SIGKILL) {
            outcomes.interrupted += 1;
        } else {
            outcomes.failed += 1;
        }
    }
    eprintln!(
        "crash: uninterrupted runs took {took:?}; of 36 children {} finished, {} were killed \
         before they finished, {} failed",
        outcomes.completed, outcomes.interrupted, outcomes.failed
    );
    // Kills that land only before start-up or only after the end test nothing.
    assert!(
        outcomes.interrupted > 0 && outcomes.completed > 0,
        "the kills must land while children run: {outcomes:?}"
    );

    // What a restarted process does: open from the configuration. For the embedded SoftHSM
    // token that first restores `token.object` if a kill during a login emptied it (SoftHSM
    // rewrites that file in place on every C_Login).
    let fresh = p11kms::app::open(&common::fixture().config).unwrap();
    let mut keys = HashSet::new();
    let mut marker = None;
    loop {
        let page = fresh
            .list_keys(ListRequest {
                limit: Some(100),
                marker: marker.clone(),
                key_id: None,
                ..Default::default()
            })
            .unwrap();
        keys.extend(page.keys.into_iter().map(|k| k.key_id));
        if !page.truncated {
            break;
        }
        marker = page.next_marker;
    }
    assert!(keys.contains(&base) && keys.contains(&spare));
    for k in &keys {
        let m = fresh.describe_key(common::key_req(k)).unwrap().key_metadata;
        if m.key_state == "Enabled" && m.key_spec == "ECC_NIST_P256" {
            let s = fresh
                .sign(SignRequest {
                    key_id: Some(k.clone().into()),
                    message: Some(SecretBytes(b"after the crash".to_vec().into())),
                    signing_algorithm: Some("ECDSA_SHA_256".into()),
                    ..Default::default()
                })
                .unwrap();
            fresh
                .verify(VerifyRequest {
                    key_id: Some(k.clone().into()),
                    message: Some(SecretBytes(b"after the crash".to_vec().into())),
                    signature: Some(s.signature),
                    signing_algorithm: Some("ECDSA_SHA_256".into()),
                    ..Default::default()
                })
                .unwrap();
        } else if m.key_state == "Enabled" {
            let r = fresh
                .generate_data_key(GenerateDataKeyRequest {
                    key_id: Some(k.clone().into()),
                    key_spec: Some("AES_256".into()),
                    ..Default::default()
                })
                .unwrap();
            let d = fresh
                .decrypt(DecryptRequest {
                    ciphertext_blob: Some(r.ciphertext_blob),
                    ..Default::default()
                })
                .unwrap();
            assert_eq!(d.plaintext, r.plaintext);
        }
    }
    let aliases = fresh.list_aliases(ListRequest::default()).unwrap().aliases;
    for a in &aliases {
        assert!(
            keys.contains(&a.target_key_id),
            "alias {} dangles",
            a.alias_name
        );
        let m = fresh
            .describe_key(common::key_req(&a.alias_name))
            .unwrap()
            .key_metadata;
        assert_eq!(m.key_id, a.target_key_id);
    }
    let main_alias = fresh
        .describe_key(common::key_req(&alias))
        .unwrap()
        .key_metadata;
    assert!(main_alias.key_id == base || main_alias.key_id == spare);

    // CMKs left by a CreateKey killed between the key and its record are orphans: invisible,
    // and swept (here with no grace period).
    let (swept, _) = fresh.sweep_orphan_cmks_after(Duration::ZERO).unwrap();
    eprintln!("crash: {swept} orphan CMKs (a kill between a key and its record) swept");
    let cmks = fresh
        .token()
        .list_cmks(p11kms::kms::CMK_LABEL_PREFIX)
        .unwrap();
    for (label, _) in &cmks {
        let id = label
            .strip_prefix(p11kms::kms::CMK_LABEL_PREFIX)
            .and_then(|r| r.split(":v").next())
            .unwrap();
        assert!(
            keys.contains(id),
            "unreferenced CMK {label} survived the sweep"
        );
    }
    assert_eq!(cmks.len(), keys.len(), "one backing key per key");
}

/// Runs `args`, killed after `after`: whether it printed its answer (finished) and whether the
/// SIGKILL interrupted it.
fn run_killed(args: &[String], after: Duration) -> (bool, bool) {
    let mut child = common::p11kms_cmd()
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(after);
    let _ = child.kill();
    let status = child.wait().unwrap();
    let mut printed = String::new();
    let _ = child.stdout.take().unwrap().read_to_string(&mut printed);
    (
        !printed.is_empty(),
        printed.is_empty() && status.signal() == Some(libc::SIGKILL),
    )
}

/// Kills `p11kms grant create` and `p11kms grant retire` at spread-out moments, then checks
/// from a freshly opened service: every grant a finished create made is there, every grant a
/// finished retire retired is gone (and stays gone), every grant left is complete and can be
/// revoked, and what is left in the token of the key's grants afterwards is tombstones only.
#[test]
fn killed_grant_writers_leave_consistent_grants() {
    let _g = serial();
    let kms = common::kms();
    let key = common::new_key();
    let grantee = "arn:aws:iam::111122223333:user/crash";
    let create_args = |i: u64| -> Vec<String> {
        [
            "grant",
            "create",
            &key,
            "--grantee",
            grantee,
            "--operation",
            "Decrypt",
            "--name",
            &format!("crash-{i}"),
        ]
        .map(String::from)
        .to_vec()
    };
    let retire_args = |token: &str| -> Vec<String> {
        ["grant", "retire", "--token", token]
            .map(String::from)
            .to_vec()
    };
    // Grants to retire, made here.
    let mut to_retire: Vec<(String, String)> = (0..20)
        .map(|_| {
            let r = kms
                .create_grant(
                    CreateGrantRequest {
                        key_id: Some(key.clone().into()),
                        grantee_principal: Some(grantee.into()),
                        operations: Some(vec!["Encrypt".into()]),
                        ..Default::default()
                    },
                    "111122223333",
                )
                .unwrap();
            (r.grant_id, r.grant_token)
        })
        .collect();
    let took: Vec<Duration> = [create_args(900), retire_args(&to_retire.pop().unwrap().1)]
        .iter()
        .map(|args| {
            let t0 = Instant::now();
            let o = common::p11kms_cmd().args(args).output().unwrap();
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            t0.elapsed()
        })
        .collect();
    let spread = took.iter().max().copied().unwrap_or_default() * 2;

    let (mut created, mut retired, mut interrupted) = (Vec::new(), Vec::new(), 0);
    let mut retire_attempts = Vec::new();
    for i in 0..36u64 {
        let after = spread.mul_f64(((i * 37) % 250) as f64 / 250.0);
        let (done, killed) = if i % 2 == 0 {
            let (done, killed) = run_killed(&create_args(i), after);
            if done {
                created.push(format!("crash-{i}"));
            }
            (done, killed)
        } else {
            let Some((id, token)) = to_retire.pop() else {
                continue;
            };
            let (done, killed) = run_killed(&retire_args(&token), after);
            if done {
                retired.push(id.clone());
            }
            retire_attempts.push(id);
            (done, killed)
        };
        if killed && !done {
            interrupted += 1;
        }
    }
    // On a loaded machine every child may have been killed before it finished: then give
    // creates longer, doubling, until one finishes (bounded), so both outcomes are checked.
    let mut longer = spread * 4;
    let mut extra = 1000u64;
    while created.is_empty() && retired.is_empty() && longer < Duration::from_secs(20) {
        if run_killed(&create_args(extra), longer).0 {
            created.push(format!("crash-{extra}"));
        }
        extra += 1;
        longer *= 2;
    }
    eprintln!(
        "grant crash: uninterrupted runs took {took:?}; {} creates and {} retires finished, \
         {interrupted} children interrupted",
        created.len(),
        retired.len()
    );
    assert!(
        interrupted > 0 && !(created.is_empty() && retired.is_empty()),
        "the kills must land while children run"
    );

    let fresh = p11kms::app::open(&common::fixture().config).unwrap();
    let list = |k: &p11kms::kms::Kms| {
        k.list_grants(ListGrantsRequest {
            key_id: Some(key.clone().into()),
            limit: Some(100),
            ..Default::default()
        })
        .unwrap()
    };
    let grants = list(&fresh);
    assert!(!grants.truncated);
    let names: HashSet<String> = grants
        .grants
        .iter()
        .filter_map(|g| g.name.clone())
        .collect();
    for n in &created {
        assert!(names.contains(n), "finished create {n} lost");
    }
    let ids: HashSet<String> = grants.grants.iter().map(|g| g.grant_id.clone()).collect();
    for id in &retired {
        assert!(!ids.contains(id), "finished retire of {id} undone");
    }
    for (id, _) in &to_retire {
        assert!(ids.contains(id), "grant {id} that nobody retired is gone");
    }
    // Every grant left is whole: it is listed with its operations and can be revoked.
    for g in &grants.grants {
        assert_eq!(g.grantee_principal, grantee);
        assert_eq!(g.operations.len(), 1);
        fresh
            .revoke_grant(RevokeGrantRequest {
                key_id: Some(key.clone().into()),
                grant_id: Some(g.grant_id.clone()),
                dry_run: None,
            })
            .unwrap();
    }
    let again = p11kms::app::open(&common::fixture().config).unwrap();
    assert!(list(&again).grants.is_empty(), "revoked grants came back");
    // What is left of the key's grants in the token: tombstones of interrupted retires only.
    for (o, value) in again
        .token()
        .list_data_values(p11kms::kms::APPLICATION)
        .unwrap()
    {
        if !o.label.starts_with("p11kms:grant:") {
            continue;
        }
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(&value) else {
            continue;
        };
        if v["key_id"] == key.as_str() {
            assert!(
                v.get("deleted_ms").is_some(),
                "a live grant object left: {}",
                o.label
            );
        }
    }
}
