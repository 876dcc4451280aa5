//! Raw HTTP against an in-process server: every authentication failure and every malformed
//! input, checking the JSON `__type`, the status, `x-amzn-RequestId`, and that the server keeps
//! answering. Requests are written by hand on a TcpStream (so anything can be sent) and signed
//! with the AWS SDK's own signer where a valid signature is needed.

mod api_support;
mod common;
mod wire;

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, SystemTime};

use api_support::{server, REGION};
use common::dev_credentials;
use wire::{connect, raw, read_response, request_bytes, signed_headers, Resp, JSON};

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
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
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
    call("ConnectCustomKeyStore", b"{}").assert_error(400, "UnsupportedOperationException");

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
