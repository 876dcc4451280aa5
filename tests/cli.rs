//! The `p11kms` binary, run for real against the fixture's token (SoftHSM or Kryoptic).

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Output, Stdio};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use p11kms::kms::types::KeyIdRequest;
use serde_json::Value;

/// Runs `p11kms args`, feeding `stdin`.
fn run_with(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = common::p11kms_cmd()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn p11kms");
    let mut input = child.stdin.take().expect("stdin");
    // A command that does not read stdin may exit first: a broken pipe here is fine.
    let _ = input.write_all(stdin);
    drop(input);
    child.wait_with_output().expect("wait for p11kms")
}

fn run(args: &[&str]) -> Output {
    run_with(args, b"")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts success and returns stdout as bytes.
fn ok_bytes_with(args: &[&str], stdin: &[u8]) -> Vec<u8> {
    let o = run_with(args, stdin);
    assert!(o.status.success(), "p11kms {args:?} failed: {}", stderr(&o));
    o.stdout
}

fn ok(args: &[&str]) -> String {
    String::from_utf8(ok_bytes_with(args, b"")).expect("utf-8 stdout")
}

fn ok_json(args: &[&str]) -> Value {
    let mut full = vec!["--json"];
    full.extend_from_slice(args);
    serde_json::from_str(&ok(&full)).expect("JSON on stdout")
}

/// Asserts exit 1 with `error: <exception>: ...` on stderr and nothing on stdout.
fn fails_with(args: &[&str], stdin: &[u8], exception: &str) -> String {
    let o = run_with(args, stdin);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "p11kms {args:?}: {err}");
    assert!(
        err.starts_with(&format!("error: {exception}: ")),
        "p11kms {args:?}: {err}"
    );
    assert!(o.stdout.is_empty(), "p11kms {args:?} printed to stdout");
    err
}

fn new_key() -> String {
    ok_json(&["key", "create"])["KeyMetadata"]["KeyId"]
        .as_str()
        .expect("KeyId")
        .to_owned()
}

fn state(key: &str) -> String {
    ok_json(&["key", "describe", key])["KeyMetadata"]["KeyState"]
        .as_str()
        .expect("KeyState")
        .to_owned()
}

fn b64(v: &Value) -> Vec<u8> {
    B64.decode(v.as_str().expect("base64 string"))
        .expect("valid base64")
}

#[test]
fn token_init_is_idempotent_and_only_for_the_embedded_token() {
    let dir = tempfile::tempdir().unwrap();
    let state_dir = dir.path().join("state");
    let init = || {
        common::embedded_cmd(&state_dir)
            .args(["token", "init"])
            .output()
            .unwrap()
    };
    let first = init();
    assert!(first.status.success(), "{}", stderr(&first));
    assert!(
        stdout(&first).contains("Initialised token"),
        "{}",
        stdout(&first)
    );
    let second = init();
    assert!(second.status.success(), "{}", stderr(&second));
    assert!(
        stdout(&second).contains("already exists"),
        "{}",
        stdout(&second)
    );
    let json = common::embedded_cmd(&state_dir)
        .args(["--json", "token", "init"])
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(v["token_created"], false);
    assert_eq!(v["files_created"], false);

    // A file configuration names a token of its own: init refuses before touching anything.
    let conf = dir.path().join("p11kms.toml");
    std::fs::write(&conf, "[token]\nlabel = \"other\"\npin_env = \"NOPE\"\n").unwrap();
    let err = fails_with(
        &["--config", conf.to_str().unwrap(), "token", "init"],
        b"",
        "KMSInternalException",
    );
    assert!(err.contains("vendor"), "{err}");
    assert!(!err.contains("PIN"), "{err}");
}

/// `token init --so-pin-file` creates the token a configuration file names (a software token
/// of the fixture's kind, in a folder of its own), idempotently; without a file it is refused.
#[test]
fn token_init_of_a_configured_software_token() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let token_section = match common::token_kind() {
        common::TokenKind::SoftHsm => {
            std::fs::create_dir(d.join("tokens")).unwrap();
            std::fs::write(
                d.join("softhsm2.conf"),
                format!("directories.tokendir = {}\n", d.join("tokens").display()),
            )
            .unwrap();
            format!(
                "softhsm2_conf = \"{}\"\n",
                d.join("softhsm2.conf").display()
            )
        }
        common::TokenKind::Kryoptic => {
            std::fs::write(
                d.join("kryoptic.toml"),
                format!(
                    "[[slots]]\nslot = 1\ndbtype = \"sqlite\"\ndbargs = \"{}\"\n",
                    d.join("k.sql").display()
                ),
            )
            .unwrap();
            format!(
                "module = \"{}\"\nenv = {{ KRYOPTIC_CONF = \"{}\" }}\n",
                common::kryoptic_module().display(),
                d.join("kryoptic.toml").display()
            )
        }
    };
    let conf = d.join("p11kms.toml");
    std::fs::write(
        &conf,
        format!("[token]\nlabel = \"fresh\"\npin_env = \"FRESH_PIN\"\n{token_section}"),
    )
    .unwrap();
    let so = d.join("so.pin");
    std::fs::write(&so, "so-secret\n").unwrap();
    let run = |args: &[&str]| {
        common::p11kms_cmd()
            .env("FRESH_PIN", "user-secret")
            .arg("--config")
            .arg(&conf)
            .args(args)
            .output()
            .unwrap()
    };
    let so_arg = so.to_str().unwrap();
    // The SO PIN file must be private.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&so, std::fs::Permissions::from_mode(0o644)).unwrap();
    let o = run(&["token", "init", "--so-pin-file", so_arg]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("chmod 600"), "{}", stderr(&o));
    std::fs::set_permissions(&so, std::fs::Permissions::from_mode(0o600)).unwrap();
    let o = run(&["token", "init", "--so-pin-file", so_arg]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("Initialised token \"fresh\""),
        "{}",
        stdout(&o)
    );
    let o = run(&["token", "init", "--so-pin-file", so_arg]);
    assert!(stdout(&o).contains("already exists"), "{}", stdout(&o));
    let o = run(&["key", "create"]);
    assert!(o.status.success(), "{}", stderr(&o));
    // The embedded token is set up without an SO PIN file.
    let o = common::embedded_cmd(&d.join("state"))
        .args(["token", "init", "--so-pin-file", so_arg])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("configuration file"), "{}", stderr(&o));
}

#[test]
fn file_config_via_flag_and_env() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("p11kms.toml");
    std::fs::write(&conf, format!("[token]\n{}", common::token_toml())).unwrap();
    let key = new_key();
    let listed = ok(&["--config", conf.to_str().unwrap(), "key", "list"]);
    assert!(listed.contains(&key));
    let o = common::p11kms_cmd()
        .env("P11KMS_CONFIG", &conf)
        .args(["token", "info"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains(&conf.display().to_string()));
}

#[test]
fn token_info_and_sweep() {
    // New keys derive with SP 800-108 (KDF id 2) where the token has it.
    let (module, maker, source, kdf) = match common::token_kind() {
        common::TokenKind::SoftHsm => (
            "libsofthsm2.so",
            "SoftHSM",
            "embedded",
            "CKM_AES_CBC_ENCRYPT_DATA",
        ),
        common::TokenKind::Kryoptic => (
            "libkryoptic_pkcs11.so",
            "Kryoptic",
            "file",
            "CKM_SP800_108_COUNTER_KDF/CKM_AES_CMAC",
        ),
    };
    let text = ok(&["token", "info"]);
    for want in [
        module,
        "CKM_AES_CBC_ENCRYPT_DATA",
        kdf,
        "KDF:",
        "C_Encrypt(CKM_AES_GCM)",
        maker,
        "GenerateDataKeyWithoutPlaintext: ",
    ] {
        assert!(text.contains(want), "{want} missing from:\n{text}");
    }
    let v = ok_json(&["token", "info"]);
    assert!(v["token"]["module"].as_str().unwrap().ends_with(module));
    assert_eq!(v["kdf"], kdf);
    assert_eq!(v["config_source"], source);
    assert!(v["keys"].as_u64().is_some());
    // What the token can do decides the path, and the report says so.
    let in_token = common::kms().token().capabilities().in_token_sealing();
    assert_eq!(v["in_token_sealing_possible"], in_token);
    assert_eq!(
        v["custody"]["data_keys_without_plaintext"],
        if in_token { "token" } else { "host" }
    );
    let ops = v["custody"]["operations"].as_array().unwrap();
    assert_eq!(ops.len(), 15, "{ops:?}");
    let wp = ops
        .iter()
        .find(|o| o["operation"] == "GenerateDataKeyWithoutPlaintext")
        .unwrap();
    if in_token {
        assert_eq!(wp["plaintext"], "token only");
        assert!(wp["path"].as_str().unwrap().contains("C_WrapKey"));
    } else {
        assert!(wp["plaintext"]
            .as_str()
            .unwrap()
            .starts_with("host memory for ~"));
    }

    let v = ok_json(&["token", "sweep"]);
    assert!(v["destroyed_keys"].as_array().is_some());
    assert!(ok(&["token", "sweep"]).contains("Destroyed"));
}

#[test]
fn key_lifecycle() {
    let v = ok_json(&[
        "key",
        "create",
        "--description",
        "cli test",
        "--tag",
        "team=x",
    ]);
    let m = &v["KeyMetadata"];
    let key = m["KeyId"].as_str().unwrap().to_owned();
    assert_eq!(m["Description"], "cli test");
    assert_eq!(m["KeyState"], "Enabled");
    assert!(m["Arn"].as_str().unwrap().ends_with(&key));
    let arn = m["Arn"].as_str().unwrap().to_owned();

    let text = ok(&["key", "describe", &arn]);
    assert!(text.contains(&key) && text.contains("Enabled"), "{text}");

    // All pages by default; --limit gives one page with a marker.
    new_key();
    let all = ok_json(&["key", "list"]);
    let ids: Vec<&str> = all["Keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["KeyId"].as_str().unwrap())
        .collect();
    assert!(ids.contains(&key.as_str()));
    assert_eq!(all["Truncated"], false);
    let page = ok_json(&["key", "list", "--limit", "1"]);
    assert_eq!(page["Keys"].as_array().unwrap().len(), 1);
    assert_eq!(page["Truncated"], true);
    let marker = page["NextMarker"].as_str().unwrap();
    let next = ok_json(&["key", "list", "--limit", "1", "--marker", marker]);
    assert_ne!(next["Keys"][0]["KeyId"], page["Keys"][0]["KeyId"]);
    assert!(ok(&["key", "list"]).contains(&key));

    ok(&["key", "disable", &key]);
    assert_eq!(state(&key), "Disabled");
    assert_eq!(ok_json(&["key", "enable", &key]), serde_json::json!({}));
    assert_eq!(state(&key), "Enabled");
    let s = ok_json(&["key", "schedule-deletion", &key, "--days", "7"]);
    assert_eq!(s["KeyState"], "PendingDeletion");
    assert_eq!(s["PendingWindowInDays"], 7);
    assert_eq!(s["KeyId"], arn);
    assert_eq!(state(&key), "PendingDeletion");
    fails_with(&["key", "enable", &key], b"", "KMSInvalidStateException");
    let c = ok_json(&["key", "cancel-deletion", &key]);
    assert_eq!(c["KeyId"], arn);
    assert_eq!(state(&key), "Disabled");
}

#[test]
fn key_policies_from_files_and_the_operators_recovery() {
    let dir = tempfile::tempdir().expect("tempdir");
    let locked = dir.path().join("locked.json");
    // A policy that names nobody who could change it again.
    let text = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"AWS":"arn:aws:iam::111122223333:user/gone"},"Action":"kms:Decrypt","Resource":"*"}]}"#;
    std::fs::write(&locked, text).expect("write");
    let key = ok_json(&["key", "create", "--policy", locked.to_str().unwrap()])["KeyMetadata"]
        ["KeyId"]
        .as_str()
        .expect("KeyId")
        .to_owned();
    assert_eq!(ok(&["key", "policy", &key]).trim_end(), text);
    let v = ok_json(&["key", "policy", &key]);
    assert_eq!(v["PolicyName"], "default");
    // The operator puts a readable policy back (no lockout check for the token's operator).
    let open = dir.path().join("default.json");
    std::fs::write(
        &open,
        r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"AWS":"arn:aws:iam::111122223333:root"},"Action":"kms:*","Resource":"*"}]}"#,
    )
    .expect("write");
    ok(&["key", "put-policy", &key, open.to_str().unwrap()]);
    assert!(ok(&["key", "policy", &key]).contains(":root"));
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, "{not json").expect("write");
    fails_with(
        &["key", "put-policy", &key, bad.to_str().unwrap()],
        b"",
        "MalformedPolicyDocumentException",
    );
    let big = dir.path().join("big.json");
    std::fs::write(&big, vec![b' '; 33 * 1024]).expect("write");
    fails_with(
        &["key", "put-policy", &key, big.to_str().unwrap()],
        b"",
        "ValidationException",
    );
}

#[test]
fn seeding_keys_with_fixed_ids_is_idempotent() {
    let dir = tempfile::tempdir().expect("tempdir");
    let seed = dir.path().join("seed.toml");
    let (a, b) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    let tag = &a.to_string()[..8];
    std::fs::write(
        &seed,
        format!(
            r#"
[[key]]
id = "{a}"
description = "seeded app key"
aliases = ["alias/seed-{tag}-app", "alias/seed-{tag}-app2"]
tags = {{ team = "payments" }}

[[key]]
id = "{b}"
spec = "ECC_NIST_P256"
usage = "SIGN_VERIFY"
"#
        ),
    )
    .expect("write seed");
    let first = ok_json(&["seed", seed.to_str().unwrap()]);
    assert_eq!(first["Created"].as_array().unwrap().len(), 2, "{first}");
    assert_eq!(first["Aliases"].as_array().unwrap().len(), 2, "{first}");
    let again = ok_json(&["seed", seed.to_str().unwrap()]);
    assert_eq!(again["Created"].as_array().unwrap().len(), 0, "{again}");
    assert_eq!(again["Existing"].as_array().unwrap().len(), 2, "{again}");
    let m = &ok_json(&["key", "describe", &format!("alias/seed-{tag}-app")])["KeyMetadata"];
    assert_eq!(m["KeyId"], a.to_string());
    assert_eq!(m["Description"], "seeded app key");
    let m = &ok_json(&["key", "describe", &b.to_string()])["KeyMetadata"];
    assert_eq!(m["KeySpec"], "ECC_NIST_P256");
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[[key]]\nid = \"not-an-id\"\n").expect("write");
    let o = run(&["seed", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("not-an-id"), "{}", stderr(&o));
}

#[test]
fn aliases() {
    let (k1, k2) = (new_key(), new_key());
    let name = format!("alias/cli-{}", &k1[..8]);
    assert_eq!(
        ok_json(&["alias", "create", &name, &k1]),
        serde_json::json!({})
    );
    fails_with(
        &["alias", "create", &name, &k2],
        b"",
        "AlreadyExistsException",
    );
    let listed = ok_json(&["alias", "list", "--key", &k1]);
    assert_eq!(listed["Aliases"][0]["AliasName"], name.as_str());
    assert_eq!(listed["Aliases"][0]["TargetKeyId"], k1.as_str());
    // The alias works as a KeyId.
    assert_eq!(
        ok_json(&["key", "describe", &name])["KeyMetadata"]["KeyId"],
        k1.as_str()
    );
    ok(&["alias", "update", &name, &k2]);
    let text = ok(&["alias", "list"]);
    assert!(text.contains(&format!("{name}\t{k2}")), "{text}");
    assert!(ok_json(&["alias", "list", "--key", &k1])["Aliases"]
        .as_array()
        .unwrap()
        .is_empty());
    ok(&["alias", "delete", &name]);
    assert!(!ok(&["alias", "list"]).contains(&name));
    fails_with(&["alias", "delete", &name], b"", "NotFoundException");
}

#[test]
fn data_keys_decrypt_only_with_their_context() {
    let key = new_key();
    let v = ok_json(&["datakey", "generate", "--key", &key, "--context", "app=cli"]);
    let plaintext = b64(&v["Plaintext"]);
    assert_eq!(plaintext.len(), 32);
    assert!(v["KeyId"].as_str().unwrap().ends_with(&key));
    let blob = v["CiphertextBlob"].as_str().unwrap().to_owned();

    // Whitespace in the base64 (line wrapping) is tolerated.
    let wrapped: String = blob
        .as_bytes()
        .chunks(20)
        .map(|c| format!("{}\n", String::from_utf8_lossy(c)))
        .collect();
    let out = ok_bytes_with(&["decrypt", "--context", "app=cli"], wrapped.as_bytes());
    assert_eq!(out, plaintext);
    fails_with(
        &["decrypt", "--context", "app=other"],
        blob.as_bytes(),
        "InvalidCiphertextException",
    );
    fails_with(&["decrypt"], blob.as_bytes(), "InvalidCiphertextException");

    // Text output and --bytes.
    let text = ok(&["datakey", "generate", "--key", &key, "--bytes", "16"]);
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .unwrap_or_else(|| panic!("{name} missing from {text}"))
            .to_owned()
    };
    assert!(field("KeyId").ends_with(&key));
    let pt = B64.decode(field("Plaintext")).unwrap();
    assert_eq!(pt.len(), 16);
    let out = ok_bytes_with(&["decrypt"], field("CiphertextBlob").as_bytes());
    assert_eq!(out, pt);

    let text = ok(&[
        "datakey",
        "generate",
        "--key",
        &key,
        "--without-plaintext",
        "--spec",
        "AES_128",
        "--context",
        "a=b",
    ]);
    assert!(!text.contains("Plaintext"), "{text}");
    let blob = text
        .lines()
        .find_map(|l| l.strip_prefix("CiphertextBlob: "))
        .unwrap()
        .to_owned();
    let dir = tempfile::tempdir().unwrap();
    let blob_file = dir.path().join("blob.b64");
    std::fs::write(&blob_file, &blob).unwrap();
    let out_file = dir.path().join("dk.bin");
    let v = ok_json(&[
        "decrypt",
        "--blob-file",
        blob_file.to_str().unwrap(),
        "--context",
        "a=b",
        "--key",
        &key,
        "--out",
        out_file.to_str().unwrap(),
    ]);
    assert!(v.get("Plaintext").is_none());
    assert!(v["KeyId"].as_str().unwrap().ends_with(&key));
    assert_eq!(std::fs::read(&out_file).unwrap().len(), 16);
    let other = new_key();
    fails_with(
        &[
            "decrypt",
            "--blob-file",
            blob_file.to_str().unwrap(),
            "--context",
            "a=b",
            "--key",
            &other,
        ],
        b"",
        "IncorrectKeyException",
    );
}

#[test]
fn encrypt_decrypt_and_reencrypt() {
    let (k1, k2) = (new_key(), new_key());
    let message = b"attack at dawn\n\x00\xff binary too";
    let blob = ok_bytes_with(&["encrypt", "--key", &k1, "--context", "x=1"], message);
    let out = ok_bytes_with(&["decrypt", "--context", "x=1"], &blob);
    assert_eq!(out, message);

    let v: Value = serde_json::from_slice(&ok_bytes_with(
        &["--json", "encrypt", "--key", &k1],
        message,
    ))
    .unwrap();
    assert_eq!(v["EncryptionAlgorithm"], "SYMMETRIC_DEFAULT");
    let d: Value = serde_json::from_slice(&ok_bytes_with(
        &["--json", "decrypt"],
        v["CiphertextBlob"].as_str().unwrap().as_bytes(),
    ))
    .unwrap();
    assert_eq!(b64(&d["Plaintext"]), message);

    let new_blob = ok_bytes_with(
        &[
            "reencrypt",
            "--key",
            &k2,
            "--source-key",
            &k1,
            "--context",
            "x=1",
            "--dest-context",
            "y=2",
        ],
        &blob,
    );
    let v: Value = serde_json::from_slice(&ok_bytes_with(
        &["--json", "decrypt", "--context", "y=2"],
        &new_blob,
    ))
    .unwrap();
    assert!(v["KeyId"].as_str().unwrap().ends_with(&k2));
    assert_eq!(b64(&v["Plaintext"]), message);
    fails_with(
        &["decrypt", "--context", "x=1"],
        &new_blob,
        "InvalidCiphertextException",
    );

    // Encrypt takes at most 4096 bytes, from a file as well as stdin.
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big");
    std::fs::write(&big, vec![7u8; 4097]).unwrap();
    fails_with(
        &["encrypt", "--key", &k1, "--in", big.to_str().unwrap()],
        b"",
        "ValidationException",
    );
    std::fs::write(&big, vec![7u8; 4096]).unwrap();
    let blob = ok_bytes_with(
        &["encrypt", "--key", &k1, "--in", big.to_str().unwrap()],
        b"",
    );
    assert_eq!(ok_bytes_with(&["decrypt"], &blob), vec![7u8; 4096]);
}

#[test]
fn random_bytes() {
    let text = ok(&["random", "--bytes", "32"]);
    assert_eq!(B64.decode(text.trim()).unwrap().len(), 32);
    let v = ok_json(&["random", "--bytes", "7"]);
    assert_eq!(b64(&v["Plaintext"]).len(), 7);
}

#[test]
fn bad_input_is_reported_with_the_aws_exception() {
    fails_with(&["random", "--bytes", "0"], b"", "ValidationException");
    fails_with(
        &["key", "describe", "00000000-0000-4000-8000-000000000000"],
        b"",
        "NotFoundException",
    );
    fails_with(
        &["key", "describe", "alias/no-such"],
        b"",
        "NotFoundException",
    );
    let key = new_key();
    fails_with(
        &["alias", "create", "alias/aws/x", &key],
        b"",
        "InvalidAliasNameException",
    );
    fails_with(&["decrypt"], b"not base64!", "ValidationException");
    fails_with(
        &["encrypt", "--key", &key, "--context", "novalue"],
        b"x",
        "ValidationException",
    );
    fails_with(
        &["datakey", "generate", "--key", &key, "--spec", "AES_512"],
        b"",
        "ValidationException",
    );
    // Usage errors are clap's: exit 2.
    let o = run(&["key", "describe"]);
    assert_eq!(o.status.code(), Some(2));
    let o = run(&[
        "datakey", "generate", "--key", &key, "--spec", "AES_256", "--bytes", "3",
    ]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn json_errors() {
    let o = run(&["--json", "random", "--bytes", "2000"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(o.stdout.is_empty());
    let v: Value = serde_json::from_slice(&o.stderr).expect("JSON error on stderr");
    assert_eq!(v["__type"], "ValidationException");
    assert!(v["message"].as_str().unwrap().contains("1024"));
    // --json is global: it may come after the subcommand too.
    let o = run(&["key", "describe", "alias/missing", "--json"]);
    let v: Value = serde_json::from_slice(&o.stderr).expect("JSON error on stderr");
    assert_eq!(v["__type"], "NotFoundException");
}

fn envelope_round_trip(key: &str, dir: &Path, extra: &[&str]) {
    let input = dir.join(format!("in{}", extra.len()));
    let sealed = dir.join(format!("sealed{}", extra.len()));
    let output = dir.join(format!("out{}", extra.len()));
    // Not a multiple of the chunk size, and not compressible into something trivial.
    let data: Vec<u8> = (0..5 * 1024 * 1024 + 123)
        .map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&input, &data).unwrap();
    let (i, s, o) = (
        input.to_str().unwrap(),
        sealed.to_str().unwrap(),
        output.to_str().unwrap(),
    );
    let mut args = vec![
        "--json",
        "envelope",
        "encrypt",
        "--key",
        key,
        "--in",
        i,
        "--out",
        s,
        "--context",
        "file=test",
    ];
    args.extend_from_slice(extra);
    let v: Value = serde_json::from_str(&ok(&args)).unwrap();
    assert_eq!(v["bytes"], data.len() as u64);
    assert!(v["key_id"].as_str().unwrap().ends_with(key));
    let text = ok(&[
        "envelope",
        "decrypt",
        "--in",
        s,
        "--out",
        o,
        "--context",
        "file=test",
    ]);
    assert!(text.contains(&data.len().to_string()), "{text}");
    assert!(std::fs::read(&output).unwrap() == data);
    std::fs::remove_file(&output).unwrap();

    // A stored context that does not match --context is refused, and nothing is written.
    fails_with(
        &[
            "envelope",
            "decrypt",
            "--in",
            s,
            "--out",
            o,
            "--context",
            "file=other",
        ],
        b"",
        "InvalidCiphertextException",
    );
    assert!(!output.exists());
}

#[test]
fn envelope_files() {
    let key = new_key();
    let dir = tempfile::tempdir().unwrap();
    envelope_round_trip(&key, dir.path(), &[]);
    envelope_round_trip(&key, dir.path(), &["--without-plaintext"]);

    // One flipped byte in the body: refused, and no output file (not even a temporary one).
    let sealed = dir.path().join("sealed0");
    let mut bytes = std::fs::read(&sealed).unwrap();
    let mid = bytes.len() - 1000;
    bytes[mid] ^= 0x01;
    let bad = dir.path().join("bad");
    std::fs::write(&bad, &bytes).unwrap();
    let out = dir.path().join("bad.out");
    fails_with(
        &[
            "envelope",
            "decrypt",
            "--in",
            bad.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
        b"",
        "InvalidCiphertextException",
    );
    assert!(!out.exists());
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn keys_are_shared_between_processes_and_the_library() {
    // Created by one process...
    let key = new_key();
    // ...seen by another...
    let v = ok_json(&["key", "describe", &key]);
    assert_eq!(v["KeyMetadata"]["KeyState"], "Enabled");
    // ...and by the long-lived in-process library once it refreshes.
    let kms = common::kms();
    kms.refresh().unwrap();
    let m = kms
        .describe_key(KeyIdRequest {
            key_id: Some(key.clone().into()),
            grant_tokens: None,
        })
        .unwrap()
        .key_metadata;
    assert_eq!(m.key_id, key);
    // And the other way round: a library key used by a process.
    let lib_key = common::new_key();
    let blob = ok_bytes_with(&["encrypt", "--key", &lib_key], b"from the library's key");
    assert_eq!(
        ok_bytes_with(&["decrypt"], &blob),
        b"from the library's key"
    );
}

/// A key of `spec` and `usage`, made by the binary.
fn new_key_of(spec: &str, usage: &str) -> String {
    let v = ok_json(&["key", "create", "--spec", spec, "--usage", usage]);
    let m = &v["KeyMetadata"];
    assert_eq!(m["KeySpec"], spec, "{v}");
    assert_eq!(m["KeyUsage"], usage, "{v}");
    m["KeyId"].as_str().expect("KeyId").to_owned()
}

#[test]
fn key_create_with_spec_and_usage_and_describe_lists_algorithms() {
    let rsa = new_key_of("RSA_2048", "SIGN_VERIFY");
    let v = ok_json(&["key", "describe", &rsa]);
    let algs = v["KeyMetadata"]["SigningAlgorithms"].as_array().unwrap();
    assert!(algs.iter().any(|a| a == "RSASSA_PSS_SHA_256"), "{v}");
    assert!(
        v["KeyMetadata"].get("EncryptionAlgorithms").is_none(),
        "{v}"
    );
    let text = ok(&["key", "describe", &rsa]);
    for want in [
        "KeySpec:      RSA_2048\n",
        "KeyUsage:     SIGN_VERIFY\n",
        "SigningAlgorithms: RSASSA_PSS_SHA_256, RSASSA_PSS_SHA_384, RSASSA_PSS_SHA_512, \
         RSASSA_PKCS1_V1_5_SHA_256, RSASSA_PKCS1_V1_5_SHA_384, RSASSA_PKCS1_V1_5_SHA_512\n",
    ] {
        assert!(text.contains(want), "{want:?} missing from:\n{text}");
    }
    assert!(!text.contains("EncryptionAlgorithms"), "{text}");

    let hmac = new_key_of("HMAC_256", "GENERATE_VERIFY_MAC");
    let text = ok(&["key", "describe", &hmac]);
    assert!(text.contains("MacAlgorithms: HMAC_SHA_256\n"), "{text}");
    let text = ok(&["key", "create", "--spec", "RSA_2048"]);
    assert!(
        text.contains("EncryptionAlgorithms: RSAES_OAEP_SHA_1, RSAES_OAEP_SHA_256\n"),
        "{text}"
    );
    // The default is still a symmetric key, and says so.
    let text = ok(&["key", "create"]);
    assert!(text.contains("KeySpec:      SYMMETRIC_DEFAULT\n"), "{text}");
    assert!(
        text.contains("EncryptionAlgorithms: SYMMETRIC_DEFAULT\n"),
        "{text}"
    );

    // The library's rules, with AWS's exceptions: the default usage does not fit HMAC.
    fails_with(
        &["key", "create", "--spec", "HMAC_256"],
        b"",
        "ValidationException",
    );
    fails_with(
        &["key", "create", "--spec", "RSA_1024"],
        b"",
        "ValidationException",
    );
    fails_with(
        &["key", "create", "--spec", "ECC_NIST_P256", "--usage", "MAC"],
        b"",
        "ValidationException",
    );
}

/// `sign` with `args` over `message` on stdin: the base64 signature it prints, written to a
/// file in `dir` for `verify --signature-file`.
fn sign_to_file(dir: &Path, name: &str, args: &[&str], message: &[u8]) -> std::path::PathBuf {
    let mut full = vec!["sign"];
    full.extend_from_slice(args);
    let text = String::from_utf8(ok_bytes_with(&full, message)).unwrap();
    assert!(B64.decode(text.trim()).unwrap().len() > 60, "{text}");
    let path = dir.join(name);
    std::fs::write(&path, &text).unwrap();
    path
}

#[test]
fn sign_and_verify_round_trip_and_tampering_fails() {
    use sha2::Digest as _;
    let dir = tempfile::tempdir().unwrap();
    let message = b"pay 100 to alice\n";
    let tampered = b"pay 900 to alice\n";
    let rsa = new_key_of("RSA_2048", "SIGN_VERIFY");
    let ecc = new_key_of("ECC_NIST_P256", "SIGN_VERIFY");
    for (key, alg) in [
        (&rsa, "RSASSA_PSS_SHA_256"),
        (&rsa, "RSASSA_PKCS1_V1_5_SHA_384"),
        (&ecc, "ECDSA_SHA_256"),
    ] {
        let sig = sign_to_file(
            dir.path(),
            alg,
            &["--key", key, "--algorithm", alg],
            message,
        );
        let s = sig.to_str().unwrap();
        let verify = [
            "verify",
            "--key",
            key,
            "--algorithm",
            alg,
            "--signature-file",
            s,
        ];
        assert_eq!(ok_bytes_with(&verify, message), b"valid\n", "{alg}");
        let err = fails_with(&verify, tampered, "KMSInvalidSignatureException");
        assert!(err.contains("not valid"), "{err}");
        // With --json: VerifyResponse, and the error as JSON.
        let mut json = vec!["--json"];
        json.extend_from_slice(&verify);
        let v: Value = serde_json::from_slice(&ok_bytes_with(&json, message)).unwrap();
        assert_eq!(v["SignatureValid"], true);
        assert_eq!(v["SigningAlgorithm"], alg);
        assert!(v["KeyId"].as_str().unwrap().ends_with(key.as_str()));
        let o = run_with(&json, tampered);
        assert_eq!(o.status.code(), Some(1));
        let e: Value = serde_json::from_slice(&o.stderr).unwrap();
        assert_eq!(e["__type"], "KMSInvalidSignatureException");

        // A flipped bit in the signature fails as well.
        let mut bytes = B64
            .decode(std::fs::read_to_string(&sig).unwrap().trim())
            .unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        let bad = dir.path().join(format!("{alg}.bad"));
        std::fs::write(&bad, B64.encode(&bytes)).unwrap();
        let bad_verify = [
            "verify",
            "--key",
            key,
            "--algorithm",
            alg,
            "--signature-file",
            bad.to_str().unwrap(),
        ];
        fails_with(&bad_verify, message, "KMSInvalidSignatureException");
    }

    // --json sign, from a file; DIGEST signs a digest made here, and verifies as RAW.
    let msg_file = dir.path().join("msg");
    std::fs::write(&msg_file, message).unwrap();
    let v = ok_json(&[
        "sign",
        "--key",
        &ecc,
        "--algorithm",
        "ECDSA_SHA_256",
        "--in",
        msg_file.to_str().unwrap(),
    ]);
    assert_eq!(v["SigningAlgorithm"], "ECDSA_SHA_256");
    assert!(v["KeyId"].as_str().unwrap().ends_with(&ecc));
    assert!(!b64(&v["Signature"]).is_empty());
    let digest = sha2::Sha256::digest(message);
    let sig = sign_to_file(
        dir.path(),
        "digest",
        &[
            "--key",
            &ecc,
            "--algorithm",
            "ECDSA_SHA_256",
            "--message-type",
            "DIGEST",
        ],
        &digest,
    );
    let s = sig.to_str().unwrap();
    assert_eq!(
        ok_bytes_with(
            &[
                "verify",
                "--key",
                &ecc,
                "--algorithm",
                "ECDSA_SHA_256",
                "--signature-file",
                s,
                "--in",
                msg_file.to_str().unwrap(),
            ],
            b"",
        ),
        b"valid\n"
    );
    assert_eq!(
        ok_bytes_with(
            &[
                "verify",
                "--key",
                &ecc,
                "--algorithm",
                "ECDSA_SHA_256",
                "--message-type",
                "DIGEST",
                "--signature-file",
                s,
            ],
            &digest,
        ),
        b"valid\n"
    );

    // The library's rules reach the caller: size, algorithm, key usage, message type.
    fails_with(
        &["sign", "--key", &ecc, "--algorithm", "ECDSA_SHA_256"],
        &[0u8; 4097],
        "ValidationException",
    );
    fails_with(
        &["sign", "--key", &ecc, "--algorithm", "RSASSA_PSS_SHA_256"],
        message,
        "InvalidKeyUsageException",
    );
    fails_with(
        &["sign", "--key", &new_key(), "--algorithm", "ECDSA_SHA_256"],
        message,
        "InvalidKeyUsageException",
    );
    fails_with(
        &[
            "sign",
            "--key",
            &ecc,
            "--algorithm",
            "ECDSA_SHA_256",
            "--message-type",
            "DIGEST",
        ],
        message,
        "ValidationException",
    );
    let empty = dir.path().join("empty");
    std::fs::write(&empty, "\n").unwrap();
    fails_with(
        &[
            "verify",
            "--key",
            &ecc,
            "--algorithm",
            "ECDSA_SHA_256",
            "--signature-file",
            empty.to_str().unwrap(),
        ],
        message,
        "ValidationException",
    );
    // --signature-file is required: a usage error.
    let o = run_with(
        &["verify", "--key", &ecc, "--algorithm", "ECDSA_SHA_256"],
        message,
    );
    assert_eq!(o.status.code(), Some(2));
}

/// The DER inside a PEM `PUBLIC KEY`, checking the armour and the 64-character lines.
fn pem_der(pem: &str) -> Vec<u8> {
    let lines: Vec<&str> = pem.lines().collect();
    assert_eq!(lines.first(), Some(&"-----BEGIN PUBLIC KEY-----"), "{pem}");
    assert_eq!(lines.last(), Some(&"-----END PUBLIC KEY-----"), "{pem}");
    let body = &lines[1..lines.len() - 1];
    assert!(!body.is_empty(), "{pem}");
    assert!(
        body[..body.len() - 1].iter().all(|l| l.len() == 64),
        "{pem}"
    );
    assert!(body[body.len() - 1].len() <= 64, "{pem}");
    B64.decode(body.concat()).expect("PEM body is base64")
}

#[test]
fn public_key_der_and_pem_parse_and_check_the_signatures() {
    use p256::ecdsa::signature::Verifier as _;
    use p256::pkcs8::DecodePublicKey as _;
    use sha2::Digest as _;
    let dir = tempfile::tempdir().unwrap();
    let message = b"signed by the token, checked by RustCrypto";

    let ecc = new_key_of("ECC_NIST_P256", "SIGN_VERIFY");
    let der = B64
        .decode(ok(&["public-key", "--key", &ecc]).trim())
        .unwrap();
    let pem = ok(&["public-key", "--key", &ecc, "--pem"]);
    assert_eq!(pem_der(&pem), der);
    let public = p256::PublicKey::from_public_key_der(&der).expect("a P-256 SPKI");
    // A signature the binary makes verifies with that key, and not over another message.
    let sig = ok_bytes_with(
        &["sign", "--key", &ecc, "--algorithm", "ECDSA_SHA_256"],
        message,
    );
    let sig = p256::ecdsa::Signature::from_der(
        &B64.decode(String::from_utf8(sig).unwrap().trim()).unwrap(),
    )
    .expect("a DER ECDSA signature");
    let vk = p256::ecdsa::VerifyingKey::from(&public);
    vk.verify(message, &sig).expect("ECDSA signature verifies");
    assert!(vk.verify(b"another message", &sig).is_err());

    let v = ok_json(&["public-key", "--key", &ecc]);
    assert_eq!(b64(&v["PublicKey"]), der);
    assert_eq!(v["KeySpec"], "ECC_NIST_P256");
    assert_eq!(v["KeyUsage"], "SIGN_VERIFY");
    assert_eq!(v["SigningAlgorithms"][0], "ECDSA_SHA_256");
    assert!(v["KeyId"].as_str().unwrap().ends_with(&ecc));

    // --out: the DER bytes, or the PEM text; public, so readable by all.
    use std::os::unix::fs::PermissionsExt;
    let der_file = dir.path().join("key.der");
    assert_eq!(
        ok(&[
            "public-key",
            "--key",
            &ecc,
            "--out",
            der_file.to_str().unwrap()
        ]),
        ""
    );
    assert_eq!(std::fs::read(&der_file).unwrap(), der);
    let mode = std::fs::metadata(&der_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o644);
    let pem_file = dir.path().join("key.pem");
    let v = ok_json(&[
        "public-key",
        "--key",
        &ecc,
        "--pem",
        "--out",
        pem_file.to_str().unwrap(),
    ]);
    assert_eq!(b64(&v["PublicKey"]), der);
    assert_eq!(std::fs::read_to_string(&pem_file).unwrap(), pem);

    // RSA: PSS with a salt as long as the digest, as AWS signs.
    let rsa = new_key_of("RSA_2048", "SIGN_VERIFY");
    let pem = ok(&["public-key", "--key", &rsa, "--pem"]);
    let public = rsa::RsaPublicKey::from_public_key_der(&pem_der(&pem)).expect("an RSA SPKI");
    let sig = ok_bytes_with(
        &["sign", "--key", &rsa, "--algorithm", "RSASSA_PSS_SHA_256"],
        message,
    );
    let sig = B64.decode(String::from_utf8(sig).unwrap().trim()).unwrap();
    let digest = sha2::Sha256::digest(message);
    public
        .verify(rsa::Pss::new::<sha2::Sha256>(), &digest, &sig)
        .expect("PSS signature verifies");
    assert!(public
        .verify(
            rsa::Pss::new::<sha2::Sha256>(),
            &sha2::Sha256::digest(b"x"),
            &sig
        )
        .is_err());

    // Symmetric and HMAC keys have no public key.
    fails_with(
        &["public-key", "--key", &new_key()],
        b"",
        "UnsupportedOperationException",
    );
    fails_with(
        &[
            "public-key",
            "--key",
            &new_key_of("HMAC_256", "GENERATE_VERIFY_MAC"),
        ],
        b"",
        "UnsupportedOperationException",
    );
}

#[test]
fn mac_generate_and_verify_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let key = new_key_of("HMAC_256", "GENERATE_VERIFY_MAC");
    let message = b"an HMAC made in the token";
    let text = String::from_utf8(ok_bytes_with(
        &[
            "mac",
            "generate",
            "--key",
            &key,
            "--algorithm",
            "HMAC_SHA_256",
        ],
        message,
    ))
    .unwrap();
    let mac = B64.decode(text.trim()).unwrap();
    assert_eq!(mac.len(), 32);
    let mac_file = dir.path().join("mac");
    std::fs::write(&mac_file, &text).unwrap();
    let m = mac_file.to_str().unwrap();
    let verify = [
        "mac",
        "verify",
        "--key",
        &key,
        "--algorithm",
        "HMAC_SHA_256",
        "--mac-file",
        m,
    ];
    assert_eq!(ok_bytes_with(&verify, message), b"valid\n");
    fails_with(
        &verify,
        b"an HMAC made in the tokeN",
        "KMSInvalidMacException",
    );
    let mut json = vec!["--json"];
    json.extend_from_slice(&verify);
    let v: Value = serde_json::from_slice(&ok_bytes_with(&json, message)).unwrap();
    assert_eq!(v["MacValid"], true);
    assert_eq!(v["MacAlgorithm"], "HMAC_SHA_256");

    // --json generate, from a file; the same message gives the same MAC.
    let msg_file = dir.path().join("msg");
    std::fs::write(&msg_file, message).unwrap();
    let v = ok_json(&[
        "mac",
        "generate",
        "--key",
        &key,
        "--algorithm",
        "HMAC_SHA_256",
        "--in",
        msg_file.to_str().unwrap(),
    ]);
    assert_eq!(b64(&v["Mac"]), mac);
    assert!(v["KeyId"].as_str().unwrap().ends_with(&key));
    let mut bad = mac.clone();
    bad[0] ^= 0x80;
    std::fs::write(&mac_file, B64.encode(&bad)).unwrap();
    fails_with(&verify, message, "KMSInvalidMacException");
    // The MAC of another key over the same message fails too.
    let other = new_key_of("HMAC_256", "GENERATE_VERIFY_MAC");
    let theirs = ok_bytes_with(
        &[
            "mac",
            "generate",
            "--key",
            &other,
            "--algorithm",
            "HMAC_SHA_256",
        ],
        message,
    );
    std::fs::write(&mac_file, &theirs).unwrap();
    fails_with(&verify, message, "KMSInvalidMacException");
    fails_with(
        &[
            "mac",
            "generate",
            "--key",
            &key,
            "--algorithm",
            "HMAC_SHA_512",
        ],
        message,
        "InvalidKeyUsageException",
    );
    fails_with(
        &[
            "mac",
            "generate",
            "--key",
            &new_key(),
            "--algorithm",
            "HMAC_SHA_256",
        ],
        message,
        "InvalidKeyUsageException",
    );
    fails_with(
        &[
            "mac",
            "generate",
            "--key",
            &key,
            "--algorithm",
            "HMAC_SHA_256",
        ],
        b"",
        "ValidationException",
    );
}

/// A `Name: value` line of a command's text output.
fn field(text: &str, name: &str) -> String {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .unwrap_or_else(|| panic!("{name} missing from {text}"))
        .to_owned()
}

#[test]
fn datakey_pair_blob_decrypts_to_its_pkcs8() {
    use p256::pkcs8::{DecodePrivateKey as _, DecodePublicKey as _};
    let key = new_key();
    let v = ok_json(&[
        "datakey-pair",
        "--key",
        &key,
        "--spec",
        "ECC_NIST_P256",
        "--context",
        "app=pairs",
    ]);
    assert_eq!(v["KeyPairSpec"], "ECC_NIST_P256");
    assert!(v["KeyId"].as_str().unwrap().ends_with(&key));
    let pkcs8 = b64(&v["PrivateKeyPlaintext"]);
    let secret = p256::SecretKey::from_pkcs8_der(&pkcs8).expect("a P-256 PKCS#8");
    let public = p256::PublicKey::from_public_key_der(&b64(&v["PublicKey"])).unwrap();
    assert_eq!(secret.public_key(), public);
    // The blob is an ordinary ciphertext of the symmetric key, with the context.
    let blob = v["PrivateKeyCiphertextBlob"].as_str().unwrap().to_owned();
    let out = ok_bytes_with(&["decrypt", "--context", "app=pairs"], blob.as_bytes());
    assert_eq!(out, pkcs8);
    fails_with(&["decrypt"], blob.as_bytes(), "InvalidCiphertextException");

    // Text: the blob, the public key, the key and spec, then the private key.
    let text = ok(&["datakey-pair", "--key", &key, "--spec", "ECC_NIST_P256"]);
    let names: Vec<&str> = text
        .lines()
        .map(|l| l.split_once(": ").unwrap().0)
        .collect();
    assert_eq!(
        names,
        [
            "PrivateKeyCiphertextBlob",
            "PublicKey",
            "KeyId",
            "KeyPairSpec",
            "PrivateKeyPlaintext"
        ]
    );
    let pkcs8 = B64.decode(field(&text, "PrivateKeyPlaintext")).unwrap();
    let out = ok_bytes_with(
        &["decrypt"],
        field(&text, "PrivateKeyCiphertextBlob").as_bytes(),
    );
    assert_eq!(out, pkcs8);
    assert_eq!(
        p256::SecretKey::from_pkcs8_der(&pkcs8)
            .unwrap()
            .public_key(),
        p256::PublicKey::from_public_key_der(&B64.decode(field(&text, "PublicKey")).unwrap())
            .unwrap()
    );

    // Without the plaintext: the blob still opens to the private key of PublicKey.
    let text = ok(&[
        "datakey-pair",
        "--key",
        &key,
        "--spec",
        "ECC_NIST_P256",
        "--without-plaintext",
        "--context",
        "a=b",
    ]);
    assert!(!text.contains("PrivateKeyPlaintext"), "{text}");
    let pkcs8 = ok_bytes_with(
        &["decrypt", "--context", "a=b", "--key", &key],
        field(&text, "PrivateKeyCiphertextBlob").as_bytes(),
    );
    assert_eq!(
        p256::SecretKey::from_pkcs8_der(&pkcs8)
            .unwrap()
            .public_key(),
        p256::PublicKey::from_public_key_der(&B64.decode(field(&text, "PublicKey")).unwrap())
            .unwrap()
    );
    let v = ok_json(&[
        "datakey-pair",
        "--key",
        &key,
        "--spec",
        "RSA_2048",
        "--without-plaintext",
    ]);
    assert!(v.get("PrivateKeyPlaintext").is_none(), "{v}");
    let pkcs8 = ok_bytes_with(
        &["decrypt"],
        v["PrivateKeyCiphertextBlob"].as_str().unwrap().as_bytes(),
    );
    let rsa_key = rsa::RsaPrivateKey::from_pkcs8_der(&pkcs8).expect("an RSA PKCS#8");
    assert_eq!(
        rsa_key.to_public_key(),
        rsa::RsaPublicKey::from_public_key_der(&b64(&v["PublicKey"])).unwrap()
    );

    // Only under a symmetric key, and only real specs.
    fails_with(
        &[
            "datakey-pair",
            "--key",
            &new_key_of("ECC_NIST_P256", "SIGN_VERIFY"),
            "--spec",
            "ECC_NIST_P256",
        ],
        b"",
        "InvalidKeyUsageException",
    );
    fails_with(
        &["datakey-pair", "--key", &key, "--spec", "ECC_NIST_P999"],
        b"",
        "ValidationException",
    );
    // --spec is required: a usage error.
    assert_eq!(run(&["datakey-pair", "--key", &key]).status.code(), Some(2));
}

/// Asserts that an RSA ciphertext that does not decrypt is refused as AWS refuses it
/// (InvalidCiphertextException, exit 1) and that nothing is printed.
fn refused(args: &[&str], stdin: &[u8]) {
    let o = run_with(args, stdin);
    assert_eq!(o.status.code(), Some(1), "p11kms {args:?}: {}", stderr(&o));
    assert!(o.stdout.is_empty(), "p11kms {args:?} printed to stdout");
    assert!(
        stderr(&o).starts_with("error: InvalidCiphertextException"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn rsa_encrypt_decrypt_and_reencrypt_with_an_algorithm() {
    let rsa = new_key_of("RSA_2048", "ENCRYPT_DECRYPT");
    let sym = new_key();
    let message = b"a secret for RSA\x00\xff";
    let oaep1 = ["--algorithm", "RSAES_OAEP_SHA_1"];
    let blob = ok_bytes_with(&["encrypt", "--key", &rsa, oaep1[0], oaep1[1]], message);
    // The raw RSA output, as at AWS: one modulus long.
    let raw = B64
        .decode(String::from_utf8(blob.clone()).unwrap().trim())
        .unwrap();
    assert_eq!(raw.len(), 256);
    let out = ok_bytes_with(&["decrypt", "--key", &rsa, oaep1[0], oaep1[1]], &blob);
    assert_eq!(out, message);
    let v: Value = serde_json::from_slice(&ok_bytes_with(
        &["--json", "decrypt", "--key", &rsa, oaep1[0], oaep1[1]],
        &blob,
    ))
    .unwrap();
    assert_eq!(v["EncryptionAlgorithm"], "RSAES_OAEP_SHA_1");
    assert_eq!(b64(&v["Plaintext"]), message);
    // An RSA ciphertext names no key; it decrypts only as it was made.
    fails_with(
        &["decrypt", oaep1[0], oaep1[1]],
        &blob,
        "ValidationException",
    );
    fails_with(
        &["decrypt", "--key", &rsa],
        &blob,
        "InvalidKeyUsageException",
    );
    // A flipped bit: refused, and no plaintext printed.
    let mut tampered = raw.clone();
    tampered[100] ^= 0x01;
    refused(
        &["decrypt", "--key", &rsa, oaep1[0], oaep1[1]],
        B64.encode(&tampered).as_bytes(),
    );

    // The library's limits: 214 bytes with SHA-1 on RSA_2048, no context, an algorithm.
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big");
    std::fs::write(&big, [7u8; 214]).unwrap();
    let b = big.to_str().unwrap();
    let v: Value = serde_json::from_slice(&ok_bytes_with(
        &[
            "--json", "encrypt", "--key", &rsa, "--in", b, oaep1[0], oaep1[1],
        ],
        b"",
    ))
    .unwrap();
    assert_eq!(v["EncryptionAlgorithm"], "RSAES_OAEP_SHA_1");
    std::fs::write(&big, [7u8; 215]).unwrap();
    fails_with(
        &["encrypt", "--key", &rsa, "--in", b, oaep1[0], oaep1[1]],
        b"",
        "ValidationException",
    );
    fails_with(
        &[
            "encrypt",
            "--key",
            &rsa,
            "--context",
            "a=b",
            oaep1[0],
            oaep1[1],
        ],
        message,
        "ValidationException",
    );
    fails_with(
        &["encrypt", "--key", &rsa],
        message,
        "InvalidKeyUsageException",
    );
    fails_with(
        &["encrypt", "--key", &sym, oaep1[0], oaep1[1]],
        message,
        "InvalidKeyUsageException",
    );

    // ReEncrypt between a symmetric and an RSA key, both ways.
    let sym_blob = ok_bytes_with(&["encrypt", "--key", &sym, "--context", "x=1"], message);
    let rsa_blob = ok_bytes_with(
        &[
            "reencrypt",
            "--key",
            &rsa,
            "--context",
            "x=1",
            "--dest-algorithm",
            "RSAES_OAEP_SHA_1",
        ],
        &sym_blob,
    );
    let out = ok_bytes_with(&["decrypt", "--key", &rsa, oaep1[0], oaep1[1]], &rsa_blob);
    assert_eq!(out, message);
    let back = ok_bytes_with(
        &[
            "reencrypt",
            "--key",
            &sym,
            "--source-key",
            &rsa,
            "--source-algorithm",
            "RSAES_OAEP_SHA_1",
            "--dest-context",
            "y=2",
        ],
        &rsa_blob,
    );
    assert_eq!(
        ok_bytes_with(&["decrypt", "--context", "y=2"], &back),
        message
    );

    // SHA-256 on every token (on SoftHSM, whose OAEP is SHA-1 only, through raw RSA in the
    // token and the padding on the host).
    {
        use p256::pkcs8::DecodePublicKey as _;
        refused(
            &[
                "decrypt",
                "--key",
                &rsa,
                "--algorithm",
                "RSAES_OAEP_SHA_256",
            ],
            &blob,
        );
        // Encrypted with the public key by RustCrypto, decrypted in the token.
        let der = B64
            .decode(ok(&["public-key", "--key", &rsa]).trim())
            .unwrap();
        let public = rsa::RsaPublicKey::from_public_key_der(&der).unwrap();
        let theirs = public
            .encrypt(
                &mut rand::rngs::OsRng,
                rsa::Oaep::new::<sha2::Sha256>(),
                message,
            )
            .unwrap();
        let out = ok_bytes_with(
            &[
                "decrypt",
                "--key",
                &rsa,
                "--algorithm",
                "RSAES_OAEP_SHA_256",
            ],
            B64.encode(&theirs).as_bytes(),
        );
        assert_eq!(out, message);
    }
}

#[test]
fn token_info_lists_the_key_specs_the_token_offers() {
    let text = ok(&["token", "info"]);
    let line = |spec: &str, usage: &str| {
        text.lines()
            .find(|l| {
                let words: Vec<&str> = l.split_whitespace().collect();
                words.len() >= 3 && words[0] == spec && words[1] == usage
            })
            .unwrap_or_else(|| panic!("{spec} {usage} missing from:\n{text}"))
            .to_owned()
    };
    assert!(text.contains("Key specs (CreateKey"), "{text}");
    assert!(
        text.contains("Data key pair specs (GenerateDataKeyPair)"),
        "{text}"
    );
    for want in ["CKM_RSA_PKCS_KEY_PAIR_GEN", "CKM_ECDSA", "CKM_SHA256_HMAC"] {
        assert!(text.contains(want), "{want} missing from:\n{text}");
    }

    let v = ok_json(&["token", "info"]);
    let specs = v["key_specs"].as_array().unwrap();
    // Every KeySpec and KeyUsage pair AWS allows and p11kms serves, once.
    assert_eq!(specs.len(), 19, "{specs:?}");
    let mut seen = std::collections::HashSet::new();
    for s in specs {
        let (spec, usage) = (
            s["key_spec"].as_str().unwrap(),
            s["key_usage"].as_str().unwrap(),
        );
        assert!(seen.insert((spec, usage)), "{spec} {usage} twice");
        // The text says the same as the JSON.
        let l = line(spec, usage);
        if s["offered"] == true {
            assert!(l.ends_with(" offered"), "{l}");
            assert!(s.get("why_not").is_none(), "{s}");
        } else {
            let why = s["why_not"].as_str().unwrap();
            assert!(l.ends_with(&format!("not offered: {why}")), "{l}");
            // And CreateKey refuses it, with the same reason.
            let err = fails_with(
                &["key", "create", "--spec", spec, "--usage", usage],
                b"",
                "UnsupportedOperationException",
            );
            assert!(err.contains(why), "{err}");
        }
    }
    for (spec, usage) in [
        ("SYMMETRIC_DEFAULT", "ENCRYPT_DECRYPT"),
        ("RSA_2048", "ENCRYPT_DECRYPT"),
        ("RSA_2048", "SIGN_VERIFY"),
        ("RSA_4096", "SIGN_VERIFY"),
        ("ECC_NIST_P256", "KEY_AGREEMENT"),
        ("ECC_NIST_EDWARDS25519", "SIGN_VERIFY"),
        ("HMAC_512", "GENERATE_VERIFY_MAC"),
    ] {
        assert!(seen.contains(&(spec, usage)), "{spec} {usage} not listed");
    }
    // SoftHSM and Kryoptic both have the mechanisms of these, and make such keys.
    for (spec, usage) in [
        ("RSA_2048", "SIGN_VERIFY"),
        ("ECC_NIST_P256", "SIGN_VERIFY"),
        ("HMAC_256", "GENERATE_VERIFY_MAC"),
    ] {
        assert!(line(spec, usage).ends_with(" offered"), "{text}");
        new_key_of(spec, usage);
    }
    assert!(!seen.contains(&("SM2", "SIGN_VERIFY")));

    let pairs = v["data_key_pair_specs"].as_array().unwrap();
    assert_eq!(
        pairs.len(),
        9,
        "every KeyPairSpec, SM2 as not offered: {pairs:?}"
    );
    assert!(pairs
        .iter()
        .any(|p| p["key_pair_spec"] == "ECC_NIST_P256" && p["offered"] == true));
    // What the token does not generate is said, not guessed from the mechanism list
    // (Kryoptic lists CKM_EC_KEY_PAIR_GEN but does not know secp256k1).
    let k1 = pairs
        .iter()
        .find(|p| p["key_pair_spec"] == "ECC_SECG_P256K1")
        .unwrap();
    assert_eq!(
        k1["offered"],
        common::token_kind() == common::TokenKind::SoftHsm,
        "{k1}"
    );
}

#[test]
fn key_rotation_commands() {
    let created = ok_json(&["key", "create"]);
    let id = created["KeyMetadata"]["KeyId"]
        .as_str()
        .unwrap()
        .to_string();
    let first = created["KeyMetadata"]["CurrentKeyMaterialId"]
        .as_str()
        .unwrap()
        .to_string();
    let s = ok_json(&["key", "rotation-status", &id]);
    assert_eq!(s["KeyRotationEnabled"], false);
    ok_json(&["key", "enable-rotation", &id, "--period", "120"]);
    let s = ok_json(&["key", "rotation-status", &id]);
    assert_eq!(s["KeyRotationEnabled"], true);
    assert_eq!(s["RotationPeriodInDays"], 120);
    fails_with(
        &["key", "enable-rotation", &id, "--period", "30"],
        b"",
        "ValidationException",
    );
    let r = ok_json(&["key", "rotate", &id]);
    let second = r["KeyMetadata"]["CurrentKeyMaterialId"].as_str().unwrap();
    assert_ne!(second, first);
    let l = ok_json(&["key", "rotations", &id]);
    let rot = l["Rotations"].as_array().unwrap();
    assert_eq!(rot.len(), 2);
    assert_eq!(rot[0]["KeyMaterialId"], first.as_str());
    assert_eq!(rot[1]["RotationType"], "ON_DEMAND");
    assert_eq!(rot[1]["KeyMaterialState"], "CURRENT");
    ok_json(&["key", "disable-rotation", &id]);
    let s = ok_json(&["key", "rotation-status", &id]);
    assert_eq!(s["KeyRotationEnabled"], false);
}
