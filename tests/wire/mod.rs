//! Raw HTTP for the wire tests: requests written by hand on a `TcpStream` (so anything can be
//! sent), signed with the AWS SDK's own signer where a valid signature is needed, and
//! responses read back with their headers.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;

pub const JSON: &str = "application/x-amz-json-1.1";

#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn request_id(&self) -> String {
        let id = self.header("x-amzn-RequestId").expect("x-amzn-RequestId");
        assert_eq!(id.len(), 36, "a UUID: {id}");
        assert!(uuid_like(id), "{id}");
        id.to_owned()
    }

    /// Asserts the AWS error shape and returns the message.
    pub fn assert_error(&self, status: u16, name: &str) -> String {
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

pub fn uuid_like(s: &str) -> bool {
    s.bytes().enumerate().all(|(i, b)| {
        matches!(i, 8 | 13 | 18 | 23) == (b == b'-') && (b == b'-' || b.is_ascii_hexdigit())
    })
}

pub fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    s
}

/// Reads one response (bodies always have Content-Length here).
pub fn read_response(s: &mut TcpStream) -> Resp {
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

pub fn raw(addr: SocketAddr, bytes: &[u8]) -> Resp {
    let mut s = connect(addr);
    s.write_all(bytes).expect("write");
    read_response(&mut s)
}

/// A request on the wire: method, path, headers (Host and Content-Length added), body.
pub fn request_bytes(
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
pub fn signed_headers(
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
