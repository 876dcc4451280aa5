//! What the server answers with: AWS JSON replies and errors, plain-text answers, and the
//! request id every answer carries.

use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, CONNECTION, CONTENT_TYPE};
use hyper::{Response, StatusCode};

use super::error::ApiError;
use super::operations::Reply;

/// The content type of the AWS JSON 1.1 protocol (also what we answer with).
pub const AMZ_JSON: &str = "application/x-amz-json-1.1";

pub(super) type Body = Full<Bytes>;

/// A request id in UUID form without a system call per request: a random per-process base
/// plus a counter (ids need to be unique, not unpredictable).
pub(super) fn request_id() -> String {
    static BASE: std::sync::OnceLock<u128> = std::sync::OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let base = *BASE.get_or_init(|| uuid::Uuid::new_v4().as_u128());
    let n = u128::from(NEXT.fetch_add(1, Ordering::Relaxed));
    uuid::Builder::from_random_bytes((base.wrapping_add(n << 64 | n)).to_be_bytes())
        .into_uuid()
        .to_string()
}

pub(super) fn reply_response(reply: Reply) -> Response<Body> {
    let body = match reply {
        Reply::Empty => Bytes::new(),
        // The buffer is zeroized when hyper drops the last reference to it.
        Reply::Json(buf) => Bytes::from_owner(buf),
    };
    with_type(Response::new(Full::new(body)), AMZ_JSON)
}

pub(super) fn error_response(e: &ApiError) -> Response<Body> {
    let mut resp = with_type(Response::new(Full::new(Bytes::from(e.body()))), AMZ_JSON);
    *resp.status_mut() = e.status;
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(e.name) {
        h.insert("x-amzn-errortype", v);
    }
    if e.status == StatusCode::PAYLOAD_TOO_LARGE || e.status == StatusCode::REQUEST_TIMEOUT {
        // The rest of the request may still be on the wire: do not reuse the connection.
        h.insert(CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

pub(super) fn text(status: StatusCode, s: &'static str) -> Response<Body> {
    let mut resp = with_type(
        Response::new(Full::new(Bytes::from_static(s.as_bytes()))),
        "text/plain; charset=utf-8",
    );
    *resp.status_mut() = status;
    resp
}

pub(super) fn with_type(mut resp: Response<Body>, content_type: &'static str) -> Response<Body> {
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_headers() {
        let e = ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "ValidationException", "big");
        let r = error_response(&e);
        assert_eq!(r.status(), 413);
        assert_eq!(r.headers()["x-amzn-errortype"], "ValidationException");
        assert_eq!(r.headers()[CONTENT_TYPE], AMZ_JSON);
        assert_eq!(r.headers()[CONNECTION], "close");
    }
}
