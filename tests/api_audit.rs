//! The audit trail of `p11kms serve` as a real process, asked with aws-sdk-kms: one
//! CloudTrail-shaped record per request with the right fields; no plaintext, data key, random
//! bytes or secret ever in it (raw, base64 or hex); `p11kms audit verify` passes on the
//! untouched trail and fails, naming the line, after a field is edited, a line deleted, two
//! lines swapped, or the file truncated; kill -9 mid-writing leaves a trail that verifies up to
//! its last whole line; the CLI's state-changing commands write records too.

mod common;
mod sdk;
mod server_process;
mod wire;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant, SystemTime};

use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::{DataKeySpec, KeySpec, KeyUsageType, MacAlgorithmSpec};
use base64::Engine as _;
use serde_json::Value;
use server_process::{Cred, Options, ServerProcess};

const PLAINTEXT: &str = "audit-test-plaintext-3b9e71d0-never-recorded";
const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn options(trail: &Path) -> Options {
    Options {
        credentials: vec![Cred::new(
            "AKIAAUDIT00000000001",
            "audit/secret+key-9d1f",
            "auditor",
        )],
        top: format!(
            "audit_dir = \"{}\"\naudit_checkpoint_records = 4\n",
            trail.display()
        ),
        ..Options::default()
    }
}

/// SIGTERM, then waits (bounded) for the exit: the closing checkpoint is written.
fn stop_gracefully(s: ServerProcess) {
    let pid = s.pid() as libc::pid_t;
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(40);
    while Instant::now() < deadline {
        let mut status = 0;
        // SAFETY: our own child.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            // Reaped here; `Drop` then kills nothing.
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("the server did not stop within 40 s of SIGTERM");
}

fn trail_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    v.retain(|p| p.extension().is_some_and(|e| e == "jsonl"));
    v.sort();
    v
}

/// A configuration for the CLI over the fixture's token, auditing into `trail`.
fn cli_config(dir: &Path, trail: &Path) -> PathBuf {
    let path = dir.join("cli.toml");
    std::fs::write(
        &path,
        format!(
            "region = \"us-east-2\"\naccount = \"111122223333\"\naudit_dir = \"{}\"\n[token]\n{}\n",
            trail.display(),
            common::token_toml()
        ),
    )
    .unwrap();
    path
}

fn cli(config: &Path, args: &[&str]) -> Output {
    common::p11kms_cmd()
        .env_remove("P11KMS_CONFIG")
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .expect("run p11kms")
}

fn verify(config: &Path, files: &[PathBuf]) -> (i32, String) {
    let mut args = vec!["audit".to_owned(), "verify".to_owned()];
    args.extend(files.iter().map(|f| f.display().to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = cli(config, &refs);
    (
        o.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

fn lines_of(p: &Path) -> Vec<String> {
    std::fs::read_to_string(p)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn records(files: &[PathBuf]) -> Vec<Value> {
    files
        .iter()
        .flat_map(|f| lines_of(f))
        .map(|l| serde_json::from_str::<Value>(&l).expect("a JSON line"))
        .filter(|v| v.get("eventName").is_some())
        .collect()
}

fn write_lines(p: &Path, lines: &[String]) {
    std::fs::write(p, lines.join("\n") + "\n").unwrap();
}

#[test]
fn every_request_is_recorded_verifiably_and_without_secrets() {
    let tmp = tempfile::tempdir().unwrap();
    let trail = tmp.path().join("trail");
    let server = server_process::start(&options(&trail));
    let cred = server.client(&Cred::new(
        "AKIAAUDIT00000000001",
        "audit/secret+key-9d1f",
        "auditor",
    ));
    let rt = runtime();
    // Secrets the trail must never hold, whatever the encoding.
    let mut secrets: Vec<Vec<u8>> = vec![
        PLAINTEXT.as_bytes().to_vec(),
        b"audit/secret+key-9d1f".to_vec(),
    ];
    let key_id = rt.block_on(async {
        let k = cred
            .create_key()
            .description("audited")
            .send()
            .await
            .unwrap();
        let id = k.key_metadata().unwrap().key_id().to_owned();
        let ct = cred
            .encrypt()
            .key_id(&id)
            .plaintext(Blob::new(PLAINTEXT.as_bytes()))
            .encryption_context("purpose", "audit-test")
            .send()
            .await
            .unwrap();
        let blob = ct.ciphertext_blob().unwrap().clone();
        let pt = cred
            .decrypt()
            .ciphertext_blob(blob)
            .encryption_context("purpose", "audit-test")
            .send()
            .await
            .unwrap();
        assert_eq!(pt.plaintext().unwrap().as_ref(), PLAINTEXT.as_bytes());
        let dk = cred
            .generate_data_key()
            .key_id(&id)
            .key_spec(DataKeySpec::Aes256)
            .send()
            .await
            .unwrap();
        secrets.push(dk.plaintext().unwrap().as_ref().to_vec());
        cred.generate_data_key_without_plaintext()
            .key_id(&id)
            .key_spec(DataKeySpec::Aes256)
            .send()
            .await
            .unwrap();
        let r = cred
            .generate_random()
            .number_of_bytes(32)
            .send()
            .await
            .unwrap();
        secrets.push(r.plaintext().unwrap().as_ref().to_vec());
        cred.create_alias()
            .alias_name("alias/audited")
            .target_key_id(&id)
            .send()
            .await
            .unwrap();
        cred.describe_key()
            .key_id("alias/audited")
            .send()
            .await
            .unwrap();
        let missing = cred
            .describe_key()
            .key_id("11111111-2222-3333-4444-555555555555")
            .send()
            .await;
        assert!(missing.is_err());
        let h = cred
            .create_key()
            .key_spec(KeySpec::Hmac256)
            .key_usage(KeyUsageType::GenerateVerifyMac)
            .send()
            .await
            .unwrap();
        let hid = h.key_metadata().unwrap().key_id().to_owned();
        let mac = cred
            .generate_mac()
            .key_id(&hid)
            .mac_algorithm(MacAlgorithmSpec::HmacSha256)
            .message(Blob::new(PLAINTEXT.as_bytes()))
            .send()
            .await
            .unwrap();
        secrets.push(mac.mac().unwrap().as_ref().to_vec());
        cred.schedule_key_deletion()
            .key_id(&hid)
            .pending_window_in_days(7)
            .send()
            .await
            .unwrap();
        id
    });
    stop_gracefully(server);

    let files = trail_files(&trail);
    assert_eq!(
        files.len(),
        1,
        "one file for one short-lived process: {files:?}"
    );
    let recs = records(&files);
    let names: Vec<&str> = recs
        .iter()
        .map(|r| r["eventName"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "CreateKey",
            "Encrypt",
            "Decrypt",
            "GenerateDataKey",
            "GenerateDataKeyWithoutPlaintext",
            "GenerateRandom",
            "CreateAlias",
            "DescribeKey",
            "DescribeKey",
            "CreateKey",
            "GenerateMac",
            "ScheduleKeyDeletion",
        ],
        "one record per request, in order"
    );
    for r in &recs {
        assert_eq!(r["eventVersion"], "1.08");
        assert_eq!(r["eventSource"], "kms.amazonaws.com");
        assert_eq!(r["awsRegion"], "us-east-2");
        assert_eq!(r["sourceIPAddress"], "127.0.0.1");
        assert_eq!(r["eventType"], "AwsApiCall");
        assert_eq!(r["eventCategory"], "Management");
        assert_eq!(r["managementEvent"], true);
        assert!(
            r["userAgent"].as_str().unwrap().contains("aws-sdk-rust"),
            "{r}"
        );
        assert_eq!(r["userIdentity"]["type"], "IAMUser");
        assert_eq!(
            r["userIdentity"]["arn"],
            "arn:aws:iam::111122223333:user/auditor"
        );
        assert_eq!(r["userIdentity"]["accountId"], "111122223333");
        assert_eq!(r["userIdentity"]["accessKeyId"], "AKIAAUDIT00000000001");
        assert_eq!(r["eventID"].as_str().unwrap().len(), 36);
        assert!(!r["requestID"].as_str().unwrap().is_empty());
        let t = r["eventTime"].as_str().unwrap();
        assert!(
            t.len() == 20 && t.ends_with('Z') && t.as_bytes()[10] == b'T',
            "{t}"
        );
    }
    let arn = format!("arn:aws:kms:us-east-2:111122223333:key/{key_id}");
    let enc = &recs[1];
    assert_eq!(enc["readOnly"], true);
    assert_eq!(enc["requestParameters"]["keyId"], key_id.as_str());
    assert_eq!(
        enc["requestParameters"]["encryptionContext"]["purpose"],
        "audit-test"
    );
    assert!(enc["requestParameters"].get("plaintext").is_none());
    assert_eq!(enc["responseElements"], Value::Null);
    assert_eq!(enc["resources"][0]["ARN"], arn.as_str());
    assert_eq!(enc["resources"][0]["type"], "AWS::KMS::Key");
    assert_eq!(enc["resources"][0]["accountId"], "111122223333");
    let dec = &recs[2];
    assert!(
        dec["requestParameters"].get("ciphertextBlob").is_none(),
        "{dec}"
    );
    assert_eq!(
        dec["requestParameters"]["encryptionContext"]["purpose"],
        "audit-test"
    );
    let create = &recs[0];
    assert_eq!(create["readOnly"], false);
    assert_eq!(create["requestParameters"]["description"], "audited");
    assert_eq!(
        create["responseElements"]["keyMetadata"]["keyId"],
        key_id.as_str()
    );
    assert_eq!(recs[3]["requestParameters"]["keySpec"], "AES_256");
    assert_eq!(recs[6]["requestParameters"]["aliasName"], "alias/audited");
    assert_eq!(recs[8]["errorCode"], "NotFoundException");
    assert!(recs[8]["errorMessage"].as_str().is_some());
    assert!(recs[7].get("errorCode").is_none());
    assert!(recs[10]["requestParameters"].get("message").is_none());
    assert_eq!(recs[11]["requestParameters"]["pendingWindowInDays"], 7);
    assert!(
        recs[11]["responseElements"]["deletionDate"].is_number(),
        "{}",
        recs[11]
    );

    // No secret in any encoding, anywhere in the trail.
    let text = files
        .iter()
        .map(|f| std::fs::read_to_string(f).unwrap())
        .collect::<String>();
    for s in &secrets {
        let b64 = B64.encode(s);
        let hexed = hex::encode(s);
        for needle in [String::from_utf8_lossy(s).into_owned(), b64, hexed] {
            if needle.len() >= 8 {
                assert!(
                    !text.contains(&needle),
                    "the trail holds a secret ({needle})"
                );
            }
        }
        assert!(!text.contains(&hex::encode_upper(s)));
    }

    // Untouched, it verifies; each kind of tampering is caught and named.
    let config = cli_config(tmp.path(), &tmp.path().join("cli-trail"));
    let (code, out) = verify(&config, &files);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("verified: 12 records"), "{out}");
    let lines = lines_of(&files[0]);
    let t = tmp.path().join("tampered.jsonl");

    let mut edited = lines.clone();
    edited[3] = edited[3].replace("\"audit-test\"", "\"audit-tost\"");
    assert_ne!(edited[3], lines[3]);
    write_lines(&t, &edited);
    let (code, out) = verify(&config, std::slice::from_ref(&t));
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("line 4 (seq 4) was changed"), "{out}");

    let mut deleted = lines.clone();
    deleted.remove(5);
    write_lines(&t, &deleted);
    let (code, out) = verify(&config, std::slice::from_ref(&t));
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("line 6") && out.contains("were removed"),
        "{out}"
    );

    let mut swapped = lines.clone();
    swapped.swap(2, 3);
    write_lines(&t, &swapped);
    let (code, out) = verify(&config, std::slice::from_ref(&t));
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("line 3") && out.contains("reordered"), "{out}");

    // A checkpoint whose MAC is not the token's.
    let cp = lines
        .iter()
        .position(|l| l.contains("\"checkpoint\""))
        .expect("a checkpoint");
    let mut forged = lines.clone();
    let v: Value = serde_json::from_str(&forged[cp]).unwrap();
    let mac = v["p11kms"]["checkpoint"]["mac"]
        .as_str()
        .unwrap()
        .to_owned();
    let flipped = if mac.starts_with('0') { "1" } else { "0" }.to_owned() + &mac[1..];
    forged[cp] = forged[cp].replace(&mac, &flipped);
    write_lines(&t, &forged);
    let (code, out) = verify(&config, std::slice::from_ref(&t));
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!("checkpoint on line {}", cp + 1)),
        "{out}"
    );

    // Truncated at a line boundary: verifies up to there, but is not closed.
    write_lines(&t, &lines[..8]);
    let (code, out) = verify(&config, std::slice::from_ref(&t));
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("verifies up to line 8"), "{out}");
    // Truncated mid-line: the torn line is named.
    let whole = std::fs::read(&files[0]).unwrap();
    std::fs::write(&t, &whole[..whole.len() - 10]).unwrap();
    let (code, out) = verify(&config, std::slice::from_ref(&t));
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains(&format!("line {} is torn", lines.len())),
        "{out}"
    );
    // Its beginning removed.
    write_lines(&t, &lines[1..]);
    let (code, out) = verify(&config, std::slice::from_ref(&t));
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("line 1 is not the file's header"), "{out}");
}

#[test]
fn hostile_request_bodies_are_recorded_and_the_trail_still_verifies() {
    let tmp = tempfile::tempdir().unwrap();
    let trail = tmp.path().join("trail");
    let server = server_process::start(&options(&trail));
    // Nested deeper than a reader's recursion limit (serde_json's is 128).
    let deep = format!(
        r#"{{"KeyId":"alias/x","KeySpec":"AES_256","EncryptionContext":{}1{}}}"#,
        "[".repeat(200),
        "]".repeat(200)
    );
    let bodies: [&[u8]; 7] = [
        // A lone surrogate: skipped JSON passes it, a reader's parse refuses it.
        br#"{"KeyId":"alias/x","KeySpec":"AES_256","EncryptionContext":{"a":"\ud800"}}"#,
        deep.as_bytes(),
        // So is a number no reader can hold.
        br#"{"KeyId":"alias/x","NumberOfBytes":1e400}"#,
        // Pretty-printed: a record is still one line.
        b"{\n  \"KeyId\" :\t\"alias/x\",\r\n  \"KeySpec\": \"AES_256\"\n}",
        br#"{"KeyId":"alias/x","KeyId":"alias/y","KeySpec":"AES_256"}"#,
        b"{\"KeyId\":\"\xff\",\"KeySpec\":\"AES_256\"}",
        br#"{"KeyId":"alias/x","KeySpec":"AES_256"} trailing"#,
    ];
    for body in bodies {
        let h = wire::signed_headers(
            server.addr,
            Some("GenerateDataKeyWithoutPlaintext"),
            Some(wire::JSON),
            body,
            ("AKIAAUDIT00000000001", "audit/secret+key-9d1f"),
            SystemTime::now(),
            server_process::REGION,
        );
        let r = wire::raw(
            server.addr,
            &wire::request_bytes(server.addr, "POST", "/", &h, body),
        );
        // No such alias, or a body the operation refuses: a client error, recorded.
        assert!(
            (400..500).contains(&r.status),
            "{}: {}",
            r.status,
            String::from_utf8_lossy(&r.body)
        );
    }
    stop_gracefully(server);

    let files = trail_files(&trail);
    let (code, out) = verify(&cli_config(tmp.path(), &trail), &files);
    assert_eq!(code, 0, "{out}");
    let recs = records(&files);
    assert_eq!(recs.len(), bodies.len());
    let params: Vec<&Value> = recs.iter().map(|r| &r["requestParameters"]).collect();
    for p in &params[..3] {
        assert_eq!(**p, Value::Null);
    }
    assert_eq!(
        *params[3],
        serde_json::json!({"keyId": "alias/x", "keySpec": "AES_256"})
    );
    for p in &params[4..] {
        assert_eq!(**p, Value::Null);
    }
    for r in &recs {
        assert_eq!(r["eventName"], "GenerateDataKeyWithoutPlaintext");
        assert!(r["errorCode"].is_string(), "{r}");
    }
}

#[test]
fn kill_9_while_writing_leaves_a_trail_that_verifies_to_its_last_whole_line() {
    let tmp = tempfile::tempdir().unwrap();
    let trail = tmp.path().join("trail");
    let cred = Cred::new("AKIAAUDIT00000000001", "audit/secret+key-9d1f", "auditor");
    let server = server_process::start(&options(&trail));
    let client = server.client(&cred);
    let rt = runtime();
    let id = rt.block_on(async {
        let k = client.create_key().send().await.unwrap();
        k.key_metadata().unwrap().key_id().to_owned()
    });
    let endpoint = server.endpoint.clone();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (endpoint, id, stop, cred) = (endpoint.clone(), id.clone(), stop.clone(), cred.clone());
        workers.push(std::thread::spawn(move || {
            let rt = runtime();
            let c = sdk::client(&endpoint, "us-east-2", &cred.id, &cred.secret, None);
            rt.block_on(async {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let _ = c
                        .generate_data_key_without_plaintext()
                        .key_id(&id)
                        .key_spec(DataKeySpec::Aes256)
                        .send()
                        .await;
                }
            });
        }));
    }
    std::thread::sleep(Duration::from_millis(1500));
    // SAFETY: our own child.
    unsafe { libc::kill(server.pid() as libc::pid_t, libc::SIGKILL) };
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in workers {
        let _ = w.join();
    }
    drop(server);
    let files = trail_files(&trail);
    assert_eq!(files.len(), 1);
    let n = records(&files).len();
    assert!(n > 10, "only {n} records in 1.5 s");
    let config = cli_config(tmp.path(), &tmp.path().join("cli-trail"));
    let (code, out) = verify(&config, &files);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("incomplete") && out.contains("verifies up to line"),
        "{out}"
    );
}

#[test]
fn cli_commands_that_change_state_are_recorded() {
    let tmp = tempfile::tempdir().unwrap();
    let trail = tmp.path().join("cli-trail");
    let config = cli_config(tmp.path(), &trail);
    let o = cli(
        &config,
        &["--json", "key", "create", "--description", "from-cli"],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let created: Value = serde_json::from_slice(&o.stdout).unwrap();
    let id = created["KeyMetadata"]["KeyId"]
        .as_str()
        .or_else(|| created["KeyId"].as_str())
        .map(str::to_owned)
        .unwrap_or_else(|| panic!("no key id in {created}"));
    let o = cli(&config, &["key", "disable", &id]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = cli(&config, &["key", "describe", &id]);
    assert!(o.status.success());
    // A failing state change is recorded with its error.
    let o = cli(
        &config,
        &["alias", "create", "alias/cli-audited", "no-such-key"],
    );
    assert!(!o.status.success());
    let files = trail_files(&trail);
    assert_eq!(
        files.len(),
        3,
        "one stream per command that changes state: {files:?}"
    );
    let recs = records(&files);
    let mut names: Vec<&str> = recs
        .iter()
        .map(|r| r["eventName"].as_str().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["CreateAlias", "CreateKey", "DisableKey"]);
    for r in &recs {
        assert_eq!(
            r["userAgent"].as_str().unwrap().split('/').next(),
            Some("p11kms-cli")
        );
        assert_eq!(r["eventSource"], "kms.amazonaws.com");
    }
    let alias = recs
        .iter()
        .find(|r| r["eventName"] == "CreateAlias")
        .unwrap();
    assert!(alias["errorCode"].as_str().is_some(), "{alias}");
    let disable = recs
        .iter()
        .find(|r| r["eventName"] == "DisableKey")
        .unwrap();
    assert_eq!(disable["requestParameters"]["keyId"], id.as_str());
    // `resources`: the key a command made, and the key a command named.
    let arn = created["KeyMetadata"]["Arn"].as_str().unwrap();
    for name in ["CreateKey", "DisableKey"] {
        let r = recs.iter().find(|r| r["eventName"] == name).unwrap();
        assert_eq!(r["resources"][0]["ARN"], arn, "{r}");
        assert_eq!(r["resources"][0]["type"], "AWS::KMS::Key", "{r}");
    }
    // A key that does not exist is no resource.
    assert_eq!(alias["resources"], serde_json::json!([]), "{alias}");
    let (code, out) = verify(&config, &files);
    assert_eq!(code, 0, "{out}");
}

#[test]
fn custody_report_is_signed_by_the_token_and_fails_when_edited() {
    let tmp = tempfile::tempdir().unwrap();
    let config = cli_config(tmp.path(), &tmp.path().join("cli-trail"));
    let o = cli(
        &config,
        &["--json", "key", "create", "--description", "custody"],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = cli(&config, &["--json", "custody", "report"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let report: Value = serde_json::from_slice(&o.stdout).unwrap();
    let r = &report["report"];
    assert!(r["token"]["model"].is_string() && r["token"]["firmware_version"].is_string());
    assert!(r["sealing"]["operations"]
        .as_array()
        .is_some_and(|a| !a.is_empty()));
    let keys = r["keys"].as_array().unwrap();
    assert!(keys
        .iter()
        .any(|k| k["token"]["label"] == "p11kms:audit:v1"));
    let cmks: Vec<&Value> = keys.iter().filter(|k| k["keyId"].is_string()).collect();
    assert!(!cmks.is_empty(), "{r}");
    for k in &cmks {
        let t = &k["token"];
        assert_eq!(t["local"], true, "{k}");
        assert_eq!(t["never_extractable"], true, "{k}");
        assert_eq!(t["always_sensitive"], true, "{k}");
        assert_eq!(t["attributes"]["value_readable"], false, "{k}");
    }
    let file = tmp.path().join("custody.json");
    std::fs::write(&file, &o.stdout).unwrap();
    let o = cli(&config, &["custody", "verify", file.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut edited = report.clone();
    edited["report"]["keys"][0]["token"]["never_extractable"] = Value::Bool(false);
    std::fs::write(&file, serde_json::to_vec_pretty(&edited).unwrap()).unwrap();
    let o = cli(&config, &["custody", "verify", file.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("does not carry"));
}

/// What a request gets once its record cannot be written (the trail's folder is moved away,
/// so the next part cannot be created): by default a state change fails with
/// `KMSInternalException` and a read-only request is answered; `audit_failure = "open"` and
/// `audit_failure_read_only = "closed"` turn each around.
#[test]
fn a_trail_that_cannot_be_written_fails_state_changes_and_not_reads_by_default() {
    // (audit_failure, audit_failure_read_only) -> (DisableKey fails, GenerateDataKey fails)
    let cases = [
        (None, None, true, false),
        (Some("open"), Some("closed"), false, true),
    ];
    for (changes, reads, change_fails, read_fails) in cases {
        let tmp = tempfile::tempdir().unwrap();
        let trail = tmp.path().join("trail");
        let mut o = options(&trail);
        // Small parts: the open one is soon closed, and the next cannot be created.
        o.top.push_str("audit_max_file_bytes = 4096\n");
        for (field, v) in [
            ("audit_failure", changes),
            ("audit_failure_read_only", reads),
        ] {
            if let Some(v) = v {
                o.top.push_str(&format!("{field} = \"{v}\"\n"));
            }
        }
        let server = server_process::start(&o);
        let cred = server.client(&Cred::new(
            "AKIAAUDIT00000000001",
            "audit/secret+key-9d1f",
            "auditor",
        ));
        let rt = runtime();
        rt.block_on(async {
            let id = cred
                .create_key()
                .send()
                .await
                .unwrap()
                .key_metadata()
                .unwrap()
                .key_id()
                .to_owned();
            std::fs::rename(&trail, tmp.path().join("moved")).unwrap();
            // Each record is about 1 KB: well past one part, the writer needs a new file.
            let mut read_errors = Vec::new();
            for _ in 0..12 {
                let r = cred
                    .generate_data_key_without_plaintext()
                    .key_id(&id)
                    .key_spec(DataKeySpec::Aes256)
                    .encryption_context("tenant", "a".repeat(200))
                    .send()
                    .await;
                read_errors.push(r.err().map(|e| sdk::code(Err::<(), _>(e))));
            }
            // The last reads come after the part was closed, whatever the batching.
            let last = read_errors.last().cloned().flatten();
            if read_fails {
                assert_eq!(
                    last.as_deref(),
                    Some("KMSInternalException"),
                    "{read_errors:?}"
                );
            } else {
                assert!(read_errors.iter().all(Option::is_none), "{read_errors:?}");
            }
            let disabled = cred.disable_key().key_id(&id).send().await;
            if change_fails {
                assert_eq!(sdk::code(disabled), "KMSInternalException");
            } else {
                disabled.unwrap();
            }
            // Failed closed or not, the state change happened (the record is what is lost).
            let state = cred.describe_key().key_id(&id).send().await;
            if !read_fails {
                let m = state.unwrap();
                assert_eq!(
                    m.key_metadata().unwrap().key_state(),
                    Some(&aws_sdk_kms::types::KeyState::Disabled)
                );
            } else {
                assert_eq!(sdk::code(state), "KMSInternalException");
            }
        });
        let log = server.stderr.lock().unwrap().join("\n");
        assert!(
            log.contains("cannot create"),
            "the failure is logged: {log}"
        );
        drop(server);
    }
}
