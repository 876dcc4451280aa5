//! Operability of `p11kms serve` as a real process: `GET /metrics` after a mix of SDK requests
//! (successes and errors) has the expected counts and is valid for `promtool check metrics`;
//! `--log-format json` writes one parseable line per request with its fields and never the
//! plaintext; `metrics_listen` moves `/metrics` to a listener of its own; `metrics = false`
//! turns it off; `p11kms healthcheck` tells a live server from a dead one.

mod common;
mod sdk;
mod server_process;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::Client;
use server_process::{Cred, Options, ServerProcess};

const PLAINTEXT: &str = "metrics-test-plaintext-7f3a9c1e-never-logged";

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// One plain-HTTP GET: (status, body).
fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read");
    let text = String::from_utf8(raw).expect("utf-8 answer");
    let (head, body) = text.split_once("\r\n\r\n").expect("head and body");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status");
    // hyper answers small bodies with a length, never chunked here.
    (status, body.to_owned())
}

/// The metric lines as `name{labels}` → value.
fn samples(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_owned(), v.parse().ok()?))
        })
        .collect()
}

fn value(s: &HashMap<String, f64>, key: &str) -> f64 {
    *s.get(key)
        .unwrap_or_else(|| panic!("{key} in the scrape; have {:#?}", sorted_keys(s)))
}

fn sorted_keys(s: &HashMap<String, f64>) -> Vec<&String> {
    let mut k: Vec<_> = s.keys().collect();
    k.sort();
    k
}

/// `promtool check metrics` on `text`, when promtool is installed (scripts/setup.sh installs
/// it for the tests, from Debian's `prometheus`).
fn promtool_check(text: &str) {
    let Ok(mut child) = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    else {
        common::skip(
            "promtool check metrics",
            "promtool is not installed (Debian package prometheus; P11KMS_SETUP_TESTS=1 scripts/setup.sh)",
        );
        return;
    };
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("feed promtool");
    let out = child.wait_with_output().expect("promtool");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Lint findings (naming advice) come with exit status 1 too: fail on any of them, so the
    // output stays clean.
    assert!(out.status.success(), "promtool check metrics:\n{said}");
}

fn start(opts: Options) -> ServerProcess {
    server_process::start(&Options {
        credentials: vec![Cred::dev()],
        ..opts
    })
}

fn client(srv: &ServerProcess) -> Client {
    srv.client(&Cred::dev())
}

#[test]
fn metrics_count_requests_and_json_logs_hold_one_line_per_request() {
    let srv = start(Options {
        args: vec!["--log-format".into(), "json".into()],
        env: vec![("P11KMS_LOG".into(), "warn,p11kms::request=info".into())],
        ..Options::default()
    });
    let c = client(&srv);
    let rt = runtime();
    let (key_arn, made) = rt.block_on(async {
        let mut made = 0;
        let key = c.create_key().send().await.expect("CreateKey");
        made += 1;
        let arn = key
            .key_metadata()
            .expect("metadata")
            .arn()
            .expect("arn")
            .to_owned();
        let mut blob = None;
        for _ in 0..3 {
            let out = c
                .encrypt()
                .key_id(&arn)
                .plaintext(Blob::new(PLAINTEXT.as_bytes()))
                .encryption_context("purpose", "metrics-test-context-value")
                .send()
                .await
                .expect("Encrypt");
            made += 1;
            blob = out.ciphertext_blob().cloned();
        }
        let pt = c
            .decrypt()
            .ciphertext_blob(blob.expect("a ciphertext"))
            .encryption_context("purpose", "metrics-test-context-value")
            .send()
            .await
            .expect("Decrypt");
        made += 1;
        assert_eq!(
            pt.plaintext().expect("plaintext").as_ref(),
            PLAINTEXT.as_bytes()
        );
        for _ in 0..2 {
            let e = c
                .describe_key()
                .key_id("alias/metrics-test-no-such-alias")
                .send()
                .await
                .expect_err("no such alias");
            made += 1;
            assert_eq!(
                aws_sdk_kms::error::ProvideErrorMetadata::code(&e),
                Some("NotFoundException")
            );
        }
        let e = c
            .encrypt()
            .key_id(&arn)
            .plaintext(Blob::new(Vec::new()))
            .send()
            .await
            .expect_err("empty plaintext");
        made += 1;
        assert_eq!(
            aws_sdk_kms::error::ProvideErrorMetadata::code(&e),
            Some("ValidationException")
        );
        let stranger = srv.client(&Cred::new("AKIANOSUCHKEY0000001", "wrong", "nobody"));
        let e = stranger
            .generate_random()
            .number_of_bytes(16)
            .send()
            .await
            .expect_err("unknown access key");
        made += 1;
        assert_eq!(
            aws_sdk_kms::error::ProvideErrorMetadata::code(&e),
            Some("UnrecognizedClientException")
        );
        (arn, made)
    });

    let (status, text) = get(srv.addr, "/metrics");
    assert_eq!(status, 200, "{text}");
    let s = samples(&text);
    let req = |op: &str, outcome: &str| {
        value(
            &s,
            &format!("p11kms_requests_total{{operation=\"{op}\",outcome=\"{outcome}\"}}"),
        )
    };
    assert_eq!(req("CreateKey", "ok"), 1.0);
    assert_eq!(req("Encrypt", "ok"), 3.0);
    assert_eq!(req("Encrypt", "ValidationException"), 1.0);
    assert_eq!(req("Decrypt", "ok"), 1.0);
    assert_eq!(req("DescribeKey", "NotFoundException"), 2.0);
    assert_eq!(req("GenerateRandom", "UnrecognizedClientException"), 1.0);
    assert_eq!(
        value(
            &s,
            "p11kms_request_duration_seconds_count{operation=\"Encrypt\"}"
        ),
        4.0
    );
    assert_eq!(
        value(
            &s,
            "p11kms_request_duration_seconds_bucket{operation=\"Encrypt\",le=\"+Inf\"}"
        ),
        4.0
    );
    let total: f64 = s
        .iter()
        .filter(|(k, _)| k.starts_with("p11kms_requests_total{"))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(total, made as f64, "every request counted once");
    assert!(value(&s, "p11kms_keys{state=\"Enabled\"}") >= 1.0);
    assert_eq!(
        value(
            &s,
            &format!(
                "p11kms_build_info{{version=\"{}\"}}",
                env!("CARGO_PKG_VERSION")
            )
        ),
        1.0
    );
    assert!(text.contains("p11kms_token_info{"), "{text}");
    assert!(value(&s, "p11kms_token_calls_total{function=\"C_GenerateKey\"}") >= 1.0);
    // At least the key's first sealing epoch key was derived in the token.
    assert!(value(&s, "p11kms_epoch_key_derivations_total") >= 1.0);
    assert!(value(&s, "p11kms_session_pool_size") >= 1.0);
    assert!(text.contains("p11kms_token_call_duration_seconds_bucket{"));
    assert!(value(&s, "p11kms_metadata_relist_duration_seconds_count") >= 1.0);
    // No key id, ARN, principal or context in any label.
    let key_id = key_arn.rsplit('/').next().expect("key id");
    for secret in [
        key_id,
        "111122223333",
        "metrics-test-context-value",
        ":user/",
    ] {
        assert!(
            !text.contains(secret),
            "{secret:?} must not appear in /metrics"
        );
    }
    promtool_check(&text);

    // The log: one JSON line per request, with its fields, and never the plaintext.
    let logs = srv.stop();
    let lines: Vec<serde_json::Value> = logs
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let requests: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|v| v["target"] == "p11kms::request")
        .collect();
    assert_eq!(requests.len(), made, "{logs}");
    let mut ids = std::collections::HashSet::new();
    for r in &requests {
        for field in ["request_id", "operation", "outcome", "principal", "key_arn"] {
            assert!(r[field].is_string(), "{field} in {r}");
        }
        assert!(r["duration_ms"].is_number(), "{r}");
        // Milliseconds to the microsecond, not a float's every digit.
        let ms = r["duration_ms"].to_string();
        assert!(
            ms.split_once('.').is_none_or(|(_, frac)| frac.len() <= 3),
            "{ms}"
        );
        assert!(r["status"].is_number(), "{r}");
        assert!(ids.insert(r["request_id"].as_str().unwrap().to_owned()));
    }
    let encrypts: Vec<_> = requests
        .iter()
        .filter(|r| r["operation"] == "Encrypt" && r["outcome"] == "ok")
        .collect();
    assert_eq!(encrypts.len(), 3);
    for r in encrypts {
        assert_eq!(r["key_arn"], key_arn.as_str());
        assert_eq!(r["principal"], Cred::dev().principal.as_str(), "{r}");
        assert_eq!(r["status"], 200);
    }
    let unknown = requests
        .iter()
        .find(|r| r["outcome"] == "UnrecognizedClientException")
        .expect("the stranger's request");
    assert_eq!(unknown["operation"], "GenerateRandom");
    assert_eq!(unknown["principal"], "");
    let b64 = base64_of(PLAINTEXT.as_bytes());
    for secret in [
        PLAINTEXT,
        b64.as_str(),
        "metrics-test-context-value",
        "wrong",
    ] {
        assert!(!logs.contains(secret), "{secret:?} in the log:\n{logs}");
    }
}

fn base64_of(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[test]
fn metrics_listen_serves_metrics_apart_and_healthcheck_asks_it() {
    let srv = start(Options {
        server: "metrics_listen = \"127.0.0.1:0\"".into(),
        ..Options::default()
    });
    // Written to stderr before `listening on` reaches stdout, but read by another thread:
    // give that thread a moment.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let line = loop {
        let found = srv.stderr_text().lines().find_map(|l| {
            l.strip_prefix("p11kms: metrics on http://")
                .map(|r| r.trim_end_matches("/metrics").to_owned())
        });
        match found {
            Some(l) => break l,
            None if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20))
            }
            None => panic!("the metrics address on stderr:\n{}", srv.stderr_text()),
        }
    };
    let metrics_addr: SocketAddr = line.parse().expect("address");
    let (status, text) = get(metrics_addr, "/metrics");
    assert_eq!(status, 200);
    assert!(text.contains("p11kms_build_info"));
    assert_eq!(get(metrics_addr, "/healthz").0, 200);
    assert_eq!(
        get(metrics_addr, "/").0,
        404,
        "KMS requests are not served there"
    );
    assert_eq!(
        get(srv.addr, "/metrics").0,
        404,
        "nor metrics on the KMS listener"
    );
    assert_eq!(get(srv.addr, "/healthz").0, 200);

    let health = |addr: &str| {
        common::p11kms_cmd()
            .args(["healthcheck", "--address", addr])
            .output()
            .expect("p11kms healthcheck")
    };
    let ok = health(&metrics_addr.to_string());
    assert!(ok.status.success(), "{ok:?}");
    assert!(health(&srv.addr.to_string()).status.success());
    let dead = {
        // A port nobody listens on: bind, learn it, close.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let down = health(&dead.to_string());
    assert_eq!(down.status.code(), Some(1), "{down:?}");
}

#[test]
fn metrics_can_be_turned_off() {
    let srv = start(Options {
        server: "metrics = false".into(),
        ..Options::default()
    });
    assert_eq!(get(srv.addr, "/metrics").0, 404);
    assert_eq!(get(srv.addr, "/healthz").0, 200);
}
