//! Raw HTTP against an in-process server: every authentication failure and every malformed
//! input, checking the JSON `__type`, the status, `x-amzn-RequestId`, and that the server keeps
//! answering. Requests are written by hand on a TcpStream (so anything can be sent) and signed
//! with the AWS SDK's own signer where a valid signature is needed.

mod api_support;
mod common;

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, SystemTime};

use api_support::{dev_credentials, server, REGION};
use aws_credential_types::Credentials;
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;

const JSON: &str = "application/x-amz-json-1.1";

#[derive(Debug)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    fn request_id(&self) -> String {
        let id = self.header("x-amzn-RequestId").expect("x-amzn-RequestId");
        assert_eq!(id.len(), 36, "a UUID: {id}");
        assert!(uuid_like(id), "{id}");
        id.to_owned()
    }

    /// Asserts the AWS error shape and returns the message.
    fn assert_error(&self, status: u16, name: &str) -> String {
        assert_eq!(
            self.status,
            status,
            "{name}: {:?}",
            String::from_utf8_lossy(&self.body)
        );
        let v = self.json();
        assert_eq!(v["__type"], name, "{v}");
        assert_eq!(self.header("x-amzn-errortype"), Some(name));
        assert_eq!(self.header("content-type"), Some(JSON));
        self.request_id();
        v["message"].as_str().expect("message").to_owned()
    }
}

fn uuid_like(s: &str) -> bool {
    s.bytes().enumerate().all(|(i, b)| {
        matches!(i, 8 | 13 | 18 | 23) == (b == b'-') && (b == b'-' || b.is_ascii_hexdigit())
    })
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    s
}

/// Reads one response (bodies always have Content-Length here).
fn read_response(s: &mut TcpStream) -> Resp {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        let n = s.read(&mut byte).expect("read head");
        assert_eq!(n, 1, "connection closed before a response: {buf:?}");
        buf.push(byte[0]);
    }
    let head = String::from_utf8(buf).expect("head is text");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().expect("status line");
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("status line {status_line}"));
    let headers: Vec<(String, String)> = lines
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (n, v) = l.split_once(':').expect("header line");
            (n.trim().to_owned(), v.trim().to_owned())
        })
        .collect();
    let len: usize = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .map(|(_, v)| v.parse().expect("content-length"))
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).expect("read body");
    Resp {
        status,
        headers,
        body,
    }
}

fn raw(addr: SocketAddr, bytes: &[u8]) -> Resp {
    let mut s = connect(addr);
    s.write_all(bytes).expect("write");
    read_response(&mut s)
}

/// A request on the wire: method, path, headers (Host and Content-Length added), body.
fn request_bytes(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(String, String)],
    body: &[u8],
) -> Vec<u8> {
    let mut out = format!("{method} {path} HTTP/1.1\r\nhost: {addr}\r\n");
    for (n, v) in headers {
        out.push_str(&format!("{n}: {v}\r\n"));
    }
    out.push_str(&format!("content-length: {}\r\n\r\n", body.len()));
    let mut out = out.into_bytes();
    out.extend_from_slice(body);
    out
}

/// Headers of a KMS request (target, content type) signed by aws-sigv4 as the SDKs sign.
fn signed_headers(
    addr: SocketAddr,
    target: Option<&str>,
    content_type: Option<&str>,
    body: &[u8],
    (id, secret): (&str, &str),
    time: SystemTime,
    region: &str,
) -> Vec<(String, String)> {
    let host = addr.to_string();
    let target = target.map(|t| format!("TrentService.{t}"));
    let mut headers: Vec<(&str, &str)> = vec![("host", &host)];
    if let Some(ct) = content_type {
        headers.push(("content-type", ct));
    }
    if let Some(t) = &target {
        headers.push(("x-amz-target", t));
    }
    let identity = Credentials::new(id, secret, None, None, "raw").into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name("kms")
        .time(time)
        .settings(SigningSettings::default())
        .build()
        .expect("params")
        .into();
    let uri = format!("http://{host}/");
    let signable = SignableRequest::new(
        "POST",
        &uri,
        headers.iter().copied(),
        SignableBody::Bytes(body),
    )
    .expect("signable");
    let (instructions, _) = sign(signable, &params).expect("sign").into_parts();
    let mut req = http::Request::builder().method("POST").uri(&uri);
    for (n, v) in &headers {
        req = req.header(*n, *v);
    }
    let mut req = req.body(()).expect("request");
    instructions.apply_to_request_http1x(&mut req);
    req.headers()
        .iter()
        .filter(|(n, _)| n.as_str() != "host")
        .map(|(n, v)| (n.as_str().to_owned(), v.to_str().expect("ascii").to_owned()))
        .collect()
}

/// A correctly signed KMS call from the dev principal.
fn call(target: &str, body: &[u8]) -> Resp {
    let addr = server().addr;
    let (id, secret) = dev_credentials();
    let h = signed_headers(
        addr,
        Some(target),
        Some(JSON),
        body,
        (&id, &secret),
        SystemTime::now(),
        REGION,
    );
    raw(addr, &request_bytes(addr, "POST", "/", &h, body))
}

/// The server still does real work.
fn assert_alive() {
    let r = call("GenerateRandom", br#"{"NumberOfBytes":16}"#);
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("content-type"), Some(JSON));
    r.request_id();
    let v = r.json();
    assert_eq!(v["Plaintext"].as_str().expect("b64").len(), 24);
}

#[test]
fn health_endpoints() {
    let addr = server().addr;
    let r = raw(addr, &request_bytes(addr, "GET", "/healthz", &[], b""));
    assert_eq!((r.status, r.body.as_slice()), (200, &b"ok\n"[..]));
    r.request_id();
    let r = raw(addr, &request_bytes(addr, "GET", "/readyz", &[], b""));
    assert_eq!(r.status, 200);
    r.request_id();
    let r = raw(addr, &request_bytes(addr, "POST", "/healthz", &[], b""));
    r.assert_error(405, "UnknownOperationException");
    assert_eq!(r.header("allow"), Some("GET, HEAD"));
}

#[test]
fn authentication_failures() {
    let addr = server().addr;
    let (id, secret) = dev_credentials();
    let body = br#"{"NumberOfBytes":16}"#;
    let now = SystemTime::now();
    let sign_as = |creds: (&str, &str), time: SystemTime, region: &str| {
        signed_headers(
            addr,
            Some("GenerateRandom"),
            Some(JSON),
            body,
            creds,
            time,
            region,
        )
    };
    let send =
        |h: &[(String, String)], b: &[u8]| raw(addr, &request_bytes(addr, "POST", "/", h, b));

    // No Authorization at all.
    let h = vec![
        ("content-type".to_owned(), JSON.to_owned()),
        (
            "x-amz-target".to_owned(),
            "TrentService.GenerateRandom".to_owned(),
        ),
    ];
    send(&h, body).assert_error(400, "MissingAuthenticationTokenException");
    assert_alive();

    // An access key the server does not know.
    let h = sign_as(("AKIANOTCONFIGURED001", "x"), now, REGION);
    send(&h, body).assert_error(400, "UnrecognizedClientException");
    assert_alive();

    // Right key, wrong secret; and a body changed after signing.
    let h = sign_as((&id, "wrong-secret"), now, REGION);
    send(&h, body).assert_error(400, "InvalidSignatureException");
    let h = sign_as((&id, &secret), now, REGION);
    send(&h, br#"{"NumberOfBytes":17}"#).assert_error(400, "InvalidSignatureException");
    // Scoped to another region.
    let h = sign_as((&id, &secret), now, "eu-west-1");
    send(&h, body).assert_error(400, "InvalidSignatureException");
    assert_alive();

    // Incomplete: a truncated Authorization header, and a missing X-Amz-Date.
    let mut h = sign_as((&id, &secret), now, REGION);
    for (n, v) in h.iter_mut() {
        if n == "authorization" {
            *v = format!("AWS4-HMAC-SHA256 Credential={id}/20240101/{REGION}/kms/aws4_request");
        }
    }
    send(&h, body).assert_error(400, "IncompleteSignatureException");
    let mut h = sign_as((&id, &secret), now, REGION);
    h.retain(|(n, _)| n != "x-amz-date");
    send(&h, body).assert_error(400, "IncompleteSignatureException");
    assert_alive();

    // Signed 20 minutes ago (and 20 minutes ahead): AWS KMS's wording for clock skew.
    for skew in [-1200i64, 1200] {
        let t = if skew < 0 {
            now - Duration::from_secs(1200)
        } else {
            now + Duration::from_secs(1200)
        };
        let h = sign_as((&id, &secret), t, REGION);
        let msg = send(&h, body).assert_error(400, "InvalidSignatureException");
        assert!(
            msg.starts_with("Signature expired") || msg.starts_with("Signature not yet current"),
            "{msg}"
        );
    }
    assert_alive();
}

#[test]
fn malformed_inputs() {
    let cases: [(&str, &[u8], u16, &str); 10] = [
        (
            "GenerateRandom",
            b"{\"NumberOfBytes\":",
            400,
            "SerializationException",
        ),
        (
            "GenerateRandom",
            b"not json at all",
            400,
            "SerializationException",
        ),
        ("GenerateRandom", b"[1,2]", 400, "SerializationException"),
        (
            "GenerateRandom",
            br#"{"NumberOfBytes":"16"}"#,
            400,
            "SerializationException",
        ),
        (
            "Encrypt",
            br#"{"KeyId":"alias/x","Plaintext":"not base64!"}"#,
            400,
            "SerializationException",
        ),
        (
            "Decrypt",
            br#"{"CiphertextBlob":"@@@@"}"#,
            400,
            "SerializationException",
        ),
        (
            "Encrypt",
            br#"{"EncryptionContext":{"a":1}}"#,
            400,
            "SerializationException",
        ),
        (
            "Encrypt",
            br#"{"Plaintext":"aGk="}"#,
            400,
            "ValidationException",
        ),
        ("Decrypt", b"{}", 400, "ValidationException"),
        ("Nope", b"{}", 400, "UnknownOperationException"),
    ];
    let mut ids = HashSet::new();
    for (target, body, status, name) in cases {
        let r = call(target, body);
        let msg = r.assert_error(status, name);
        assert!(!msg.is_empty(), "{target} {name}");
        assert!(ids.insert(r.request_id()), "request ids are unique");
        assert_alive();
    }
    // Which member failed is named.
    let r = call("GenerateRandom", br#"{"NumberOfBytes":"16"}"#);
    assert!(r
        .assert_error(400, "SerializationException")
        .contains("NumberOfBytes"));
    let r = call("Decrypt", br#"{"CiphertextBlob":"@@@@"}"#);
    assert!(r
        .assert_error(400, "SerializationException")
        .contains("CiphertextBlob"));

    // A real AWS operation p11kms does not serve.
    call("Sign", b"{}").assert_error(400, "UnsupportedOperationException");

    let addr = server().addr;
    let creds = dev_credentials();
    let creds = (creds.0.as_str(), creds.1.as_str());
    // No X-Amz-Target.
    let h = signed_headers(
        addr,
        None,
        Some(JSON),
        b"{}",
        creds,
        SystemTime::now(),
        REGION,
    );
    raw(addr, &request_bytes(addr, "POST", "/", &h, b"{}"))
        .assert_error(400, "UnknownOperationException");
    // A body that is not JSON by its declared type.
    let h = signed_headers(
        addr,
        Some("ListKeys"),
        Some("application/x-www-form-urlencoded"),
        b"a=b",
        creds,
        SystemTime::now(),
        REGION,
    );
    raw(addr, &request_bytes(addr, "POST", "/", &h, b"a=b"))
        .assert_error(400, "SerializationException");
    // application/json is accepted as well, and an empty body means {}.
    let h = signed_headers(
        addr,
        Some("ListKeys"),
        Some("application/json"),
        b"",
        creds,
        SystemTime::now(),
        REGION,
    );
    let r = raw(addr, &request_bytes(addr, "POST", "/", &h, b""));
    assert_eq!(r.status, 200);
    assert!(r.json()["Keys"].is_array());
    assert_alive();
}

#[test]
fn wrong_methods_and_paths_answer_json() {
    let addr = server().addr;
    for method in ["GET", "PUT", "DELETE"] {
        let r = raw(addr, &request_bytes(addr, method, "/", &[], b""));
        r.assert_error(405, "UnknownOperationException");
        assert_eq!(r.header("allow"), Some("POST"));
    }
    let r = raw(addr, &request_bytes(addr, "POST", "/some/path", &[], b"{}"));
    r.assert_error(404, "UnknownOperationException");
    assert_alive();
}

#[test]
fn oversized_bodies() {
    let srv = server();
    let addr = srv.addr;
    let big = vec![b' '; srv.max_body_bytes + 1];
    // Declared length over the limit: refused before authentication, connection closed.
    let h = vec![
        ("content-type".to_owned(), JSON.to_owned()),
        ("x-amz-target".to_owned(), "TrentService.Encrypt".to_owned()),
    ];
    let r = raw(addr, &request_bytes(addr, "POST", "/", &h, &big));
    let msg = r.assert_error(413, "ValidationException");
    assert!(msg.contains(&srv.max_body_bytes.to_string()), "{msg}");
    assert_eq!(r.header("connection"), Some("close"));

    // Chunked, so the size is only known while reading: first authenticated (from its
    // head), then read up to the limit. Without a known access key nothing is read at all.
    let chunked = |signed: bool| {
        let mut s = connect(addr);
        let mut head = format!(
            "POST / HTTP/1.1\r\nhost: {addr}\r\ncontent-type: {JSON}\r\n\
             x-amz-target: TrentService.Encrypt\r\ntransfer-encoding: chunked\r\n"
        );
        if signed {
            let (id, secret) = dev_credentials();
            for (n, v) in signed_headers(
                addr,
                Some("Encrypt"),
                Some(JSON),
                b"",
                (&id, &secret),
                SystemTime::now(),
                REGION,
            ) {
                if n == "authorization" || n == "x-amz-date" {
                    head.push_str(&format!("{n}: {v}\r\n"));
                }
            }
        }
        head.push_str("\r\n");
        s.write_all(head.as_bytes()).expect("head");
        let chunk = vec![b' '; 64 * 1024];
        let mut sent = 0;
        while sent <= srv.max_body_bytes {
            let wrote = s
                .write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
                .and_then(|()| s.write_all(&chunk))
                .and_then(|()| s.write_all(b"\r\n"));
            if wrote.is_err() {
                break; // the server answered and closed without reading it all
            }
            sent += chunk.len();
        }
        let _ = s.write_all(b"0\r\n\r\n");
        read_response(&mut s)
    };
    chunked(true).assert_error(413, "ValidationException");
    chunked(false).assert_error(400, "MissingAuthenticationTokenException");
    assert_alive();

    // Just under the limit is read, then judged on its content.
    let fits = vec![b' '; srv.max_body_bytes - 2];
    let mut body = b"{}".to_vec();
    body.extend_from_slice(&fits[..fits.len() - 2]);
    let r = call("ListKeys", &body);
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
}

#[test]
fn empty_output_operations_answer_an_empty_200() {
    let id = common::new_key();
    let r = call("DisableKey", format!(r#"{{"KeyId":"{id}"}}"#).as_bytes());
    assert_eq!(r.status, 200);
    assert!(r.body.is_empty());
    assert_eq!(r.header("content-length"), Some("0"));
    assert_eq!(r.header("content-type"), Some(JSON));
    r.request_id();
    let r = call("EnableKey", format!(r#"{{"KeyId":"{id}"}}"#).as_bytes());
    assert_eq!((r.status, r.body.len()), (200, 0));
}

#[test]
fn garbage_on_the_wire_does_not_hurt() {
    let addr = server().addr;
    for junk in [
        &b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"[..],
        b"GARBAGE\r\n\r\n",
        b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: nope\r\n\r\n",
        b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\nab",
    ] {
        let mut s = connect(addr);
        s.set_read_timeout(Some(Duration::from_millis(500)))
            .expect("timeout");
        s.write_all(junk).expect("write");
        let _ = s.shutdown(std::net::Shutdown::Write);
        let mut sink = Vec::new();
        let _ = s.read_to_end(&mut sink);
    }
    assert_alive();
}

#[test]
fn keep_alive_and_pipelining() {
    let addr = server().addr;
    let (id, secret) = dev_credentials();
    let mut s = connect(addr);
    for n in 1..=3 {
        let body = format!(r#"{{"NumberOfBytes":{n}}}"#);
        let h = signed_headers(
            addr,
            Some("GenerateRandom"),
            Some(JSON),
            body.as_bytes(),
            (&id, &secret),
            SystemTime::now(),
            REGION,
        );
        s.write_all(&request_bytes(addr, "POST", "/", &h, body.as_bytes()))
            .expect("write");
        let r = read_response(&mut s);
        assert_eq!(r.status, 200, "request {n} on one connection");
        r.request_id();
    }
    // An error does not cost the connection either.
    s.write_all(&request_bytes(addr, "GET", "/", &[], b""))
        .expect("write");
    read_response(&mut s).assert_error(405, "UnknownOperationException");
    s.write_all(&request_bytes(addr, "GET", "/healthz", &[], b""))
        .expect("write");
    assert_eq!(read_response(&mut s).status, 200);
}

#[test]
fn concurrent_requests_share_the_session_pool() {
    let id = common::new_key();
    let body = format!(r#"{{"KeyId":"{id}","KeySpec":"AES_256"}}"#);
    let threads: Vec<_> = (0..16)
        .map(|_| {
            let body = body.clone();
            std::thread::spawn(move || {
                for _ in 0..5 {
                    let r = call("GenerateDataKey", body.as_bytes());
                    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("thread");
    }
}

#[test]
fn shutdown_drains_in_flight_requests() {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let (addr, handle) = api_support::spawn(api_support::settings(None), async {
        let _ = rx.await;
    });
    let (id, secret) = dev_credentials();
    let body = br#"{"NumberOfBytes":8}"#;
    let h = signed_headers(
        addr,
        Some("GenerateRandom"),
        Some(JSON),
        body,
        (&id, &secret),
        SystemTime::now(),
        REGION,
    );
    let bytes = request_bytes(addr, "POST", "/", &h, body);
    // Half a request is on the wire when shutdown begins...
    let mut s = connect(addr);
    let split = bytes.len() - 5;
    s.write_all(&bytes[..split]).expect("first half");
    std::thread::sleep(Duration::from_millis(200));
    tx.send(()).expect("signal shutdown");
    std::thread::sleep(Duration::from_millis(200));
    // ...and still gets its answer.
    s.write_all(&bytes[split..]).expect("second half");
    let r = read_response(&mut s);
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    drop(s);
    handle.join().expect("server thread").expect("run");
    assert!(
        TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err(),
        "no longer accepting"
    );
}

/// Every served operation with each member replaced by odd values of every JSON type: never a
/// 5xx, always the AWS error shape, and the server keeps answering.
#[test]
fn odd_values_in_every_member() {
    let key = common::new_key();
    let blob = {
        let r = call(
            "Encrypt",
            format!(r#"{{"KeyId":"{key}","Plaintext":"aGVsbG8="}}"#).as_bytes(),
        );
        assert_eq!(r.status, 200);
        r.json()["CiphertextBlob"]
            .as_str()
            .expect("blob")
            .to_owned()
    };
    let long = format!("\"{}\"", "a".repeat(9000));
    let values: Vec<String> = [
        "null",
        "true",
        "0",
        "-1",
        "1.5",
        "1e308",
        "18446744073709551616",
        "\"\"",
        "\"x\"",
        "\"AAAA\"",
        "\"====\"",
        "\"\\u0000\\ud83d\\ude00\"",
        "\"alias/\"",
        "\"alias/aws/x\"",
        "\"arn:aws:kms:us-east-2:111122223333:key/\"",
        "\"arn:aws:kms:us-east-2:111122223333:alias/x\"",
        "{}",
        "[]",
        "[\"a\"]",
        "{\"a\":\"b\"}",
        "{\"a\":{\"b\":[]}}",
        "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([long, format!("\"{key}\""), format!("\"{blob}\"")])
    .collect();
    let ops: [(&str, &[&str], String); 16] = [
        (
            "DescribeKey",
            &["KeyId", "GrantTokens"],
            format!(r#""KeyId":"{key}""#),
        ),
        ("ListKeys", &["Limit", "Marker"], String::new()),
        ("ListAliases", &["Limit", "Marker", "KeyId"], String::new()),
        ("EnableKey", &["KeyId"], format!(r#""KeyId":"{key}""#)),
        ("DisableKey", &["KeyId"], format!(r#""KeyId":"{key}""#)),
        (
            "CancelKeyDeletion",
            &["KeyId"],
            format!(r#""KeyId":"{key}""#),
        ),
        (
            "CreateAlias",
            &["AliasName", "TargetKeyId"],
            format!(r#""AliasName":"alias/odd","TargetKeyId":"{key}""#),
        ),
        (
            "UpdateAlias",
            &["AliasName", "TargetKeyId"],
            format!(r#""AliasName":"alias/odd","TargetKeyId":"{key}""#),
        ),
        (
            "DeleteAlias",
            &["AliasName"],
            r#""AliasName":"alias/odd2""#.into(),
        ),
        (
            "Encrypt",
            &[
                "KeyId",
                "Plaintext",
                "EncryptionContext",
                "GrantTokens",
                "EncryptionAlgorithm",
                "DryRun",
            ],
            format!(r#""KeyId":"{key}","Plaintext":"aGk=""#),
        ),
        (
            "Decrypt",
            &[
                "CiphertextBlob",
                "KeyId",
                "EncryptionContext",
                "EncryptionAlgorithm",
                "Recipient",
            ],
            format!(r#""CiphertextBlob":"{blob}""#),
        ),
        (
            "ReEncrypt",
            &[
                "CiphertextBlob",
                "SourceKeyId",
                "DestinationKeyId",
                "SourceEncryptionContext",
                "DestinationEncryptionContext",
            ],
            format!(r#""CiphertextBlob":"{blob}","DestinationKeyId":"{key}""#),
        ),
        (
            "GenerateDataKey",
            &["KeyId", "KeySpec", "NumberOfBytes", "EncryptionContext"],
            format!(r#""KeyId":"{key}","KeySpec":"AES_256""#),
        ),
        (
            "GenerateDataKeyWithoutPlaintext",
            &["KeyId", "KeySpec", "NumberOfBytes"],
            format!(r#""KeyId":"{key}","NumberOfBytes":16"#),
        ),
        (
            "GenerateRandom",
            &["NumberOfBytes", "CustomKeyStoreId"],
            r#""NumberOfBytes":8"#.into(),
        ),
        (
            "CreateKey",
            &["KeyUsage", "KeySpec", "Tags", "Origin"],
            r#""Description":"odd""#.into(),
        ),
    ];
    let mut requests = 0;
    for (op, members, base) in &ops {
        for member in *members {
            for value in &values {
                // The member is appended last; for a duplicate, that is a SerializationException.
                let sep = if base.is_empty() { "" } else { "," };
                let body = format!("{{{base}{sep}\"{member}\":{value}}}");
                let r = call(op, body.as_bytes());
                requests += 1;
                assert!(
                    r.status < 500,
                    "{op} {body}: {} {:?}",
                    r.status,
                    String::from_utf8_lossy(&r.body)
                );
                r.request_id();
                if r.status != 200 {
                    let v = r.json();
                    assert!(v["__type"].is_string(), "{op} {body}: {v}");
                }
            }
        }
    }
    assert!(requests > 500);
    assert_alive();
}
