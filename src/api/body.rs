//! Reading a request's body: its declared length, its size limit (413), its time limit, a
//! buffer that is zeroized when dropped, and its content type.

use std::time::Duration;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{HeaderMap, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::StatusCode;
use zeroize::Zeroizing;

use super::error::ApiError;
use super::response::AMZ_JSON;

/// The whole body must arrive within this.
const BODY_TIMEOUT: Duration = Duration::from_secs(20);
/// An oversized body is read and discarded up to this much more, so the client (which is
/// usually still sending) gets the 413 instead of a connection reset.
const DISCARD_LIMIT: u64 = 1 << 20;
/// ...and for at most this long: a client that declares a length and then sends nothing
/// (before any signature is checked) gets its 413 after this, and the connection is closed.
/// Without it such a connection would stay busy forever, and busy connections are never
/// evicted (see [`super::conns`]).
const DISCARD_TIMEOUT: Duration = Duration::from_secs(2);
/// The body buffer's first allocation at most (see [`initial_capacity`]).
const INITIAL_CAPACITY: usize = 16 << 10;

/// The declared `Content-Length`, or the 413 for a body declared larger than `max`: refused
/// on its declared size alone, the rest is read and thrown away (bounded in bytes and time,
/// not buffered) so that a client still sending sees the answer.
pub(super) async fn declared_length(
    headers: &HeaderMap,
    body: &mut Incoming,
    max: usize,
) -> Result<Option<u64>, ApiError> {
    let declared = content_length(headers)?;
    if let Some(n) = declared.filter(|n| *n > max as u64) {
        if n <= max as u64 + DISCARD_LIMIT {
            discard(body, n).await;
        }
        return Err(too_large(n, max));
    }
    Ok(declared)
}

/// The body (see [`read_at_most`]), within [`BODY_TIMEOUT`].
pub(super) async fn read_body(
    body: Incoming,
    declared: Option<u64>,
    max: usize,
) -> Result<Zeroizing<Vec<u8>>, ApiError> {
    match tokio::time::timeout(BODY_TIMEOUT, read_at_most(body, declared, max)).await {
        Ok(b) => b,
        Err(_) => Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "RequestTimeoutException",
            format!("The request body was not received within {BODY_TIMEOUT:?}"),
        )),
    }
}

fn content_length(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    match headers.get(CONTENT_LENGTH) {
        None => Ok(None),
        // hyper has already rejected malformed or conflicting lengths.
        Some(v) => Ok(v.to_str().ok().and_then(|s| s.parse().ok())),
    }
}

fn too_large(n: u64, max: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "ValidationException",
        format!("The request body ({n} bytes or more) exceeds the limit of {max} bytes"),
    )
}

/// The body, at most `max` bytes, in a buffer that is zeroized when dropped (it may carry
/// plaintext). A body that grows past `max` is discarded and answered 413. (A declared length
/// over `max` is refused before this is called.)
async fn read_at_most(
    mut body: Incoming,
    declared: Option<u64>,
    max: usize,
) -> Result<Zeroizing<Vec<u8>>, ApiError> {
    let mut buf = Zeroizing::new(Vec::with_capacity(initial_capacity(declared, max)));
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            ApiError::serialization(format!("Could not read the request body: {e}"))
        })?;
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        if let Err(total) = append(&mut buf, &data, max) {
            discard(&mut body, max as u64 + DISCARD_LIMIT).await;
            return Err(too_large(total, max));
        }
    }
    Ok(buf)
}

/// What the body buffer starts with: the declared length, but at most [`INITIAL_CAPACITY`].
/// The signature is not checked until the body is in, so a declared length alone must not
/// reserve `max` bytes per connection; a body that really is larger grows into it.
fn initial_capacity(declared: Option<u64>, max: usize) -> usize {
    let declared = declared.map_or(0, |n| usize::try_from(n).unwrap_or(usize::MAX));
    declared.min(max).min(INITIAL_CAPACITY)
}

/// Appends `data` to `buf`, or `Err(total)` (and `buf` untouched) when the two together
/// would exceed `max`. The buffer's capacity never exceeds `max` (beyond what it started
/// with), and it grows by hand so that an old allocation is zeroized, not just freed.
fn append(buf: &mut Zeroizing<Vec<u8>>, data: &[u8], max: usize) -> Result<(), u64> {
    let total = buf.len().saturating_add(data.len());
    if total > max {
        return Err(total as u64);
    }
    if total > buf.capacity() {
        let cap = total.max(buf.capacity().saturating_mul(2)).min(max);
        let mut bigger = Zeroizing::new(Vec::with_capacity(cap));
        bigger.extend_from_slice(buf);
        *buf = bigger;
    }
    buf.extend_from_slice(data);
    Ok(())
}

/// Reads and drops the rest of `body`: at most `limit` bytes and [`DISCARD_TIMEOUT`],
/// whichever comes first (the answer is a 413 that closes the connection either way).
async fn discard(body: &mut Incoming, limit: u64) {
    let drain = async {
        let mut seen = 0u64;
        while let Some(Ok(frame)) = body.frame().await {
            if let Some(d) = frame.data_ref() {
                seen += d.len() as u64;
            }
            if seen > limit {
                break;
            }
        }
    };
    // Timing out is the expected end for a client that stopped sending.
    let _ = tokio::time::timeout(DISCARD_TIMEOUT, drain).await;
}

/// AWS JSON bodies; `application/json` is accepted too, and a missing type is tolerated.
pub(super) fn check_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(v) = headers.get(CONTENT_TYPE) else {
        return Ok(());
    };
    let essence = v
        .to_str()
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match essence.as_str() {
        "application/x-amz-json-1.1" | "application/x-amz-json-1.0" | "application/json" => Ok(()),
        _ => Err(ApiError::serialization(format!(
            "Unsupported Content-Type {:?}: send {AMZ_JSON}",
            v.to_str().unwrap_or("<binary>")
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    #[test]
    fn content_types() {
        let mut h = HeaderMap::new();
        assert!(check_content_type(&h).is_ok());
        for ok in [
            "application/x-amz-json-1.1",
            "application/json; charset=utf-8",
            "Application/X-Amz-Json-1.0",
        ] {
            h.insert(CONTENT_TYPE, HeaderValue::from_static(ok));
            assert!(check_content_type(&h).is_ok(), "{ok}");
        }
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/x-www-form-urlencoded"),
        );
        assert_eq!(
            check_content_type(&h).unwrap_err().name,
            "SerializationException"
        );
    }

    #[test]
    fn a_declared_length_reserves_little() {
        let max = 256 << 10;
        assert_eq!(initial_capacity(None, max), 0);
        assert_eq!(initial_capacity(Some(100), max), 100);
        assert_eq!(initial_capacity(Some(max as u64), max), INITIAL_CAPACITY);
        assert_eq!(initial_capacity(Some(u64::MAX), max), INITIAL_CAPACITY);
        assert_eq!(initial_capacity(Some(5000), 1000), 1000);
    }

    #[test]
    fn the_buffer_grows_to_max_and_never_past_it() {
        let max = 1000;
        let mut buf = Zeroizing::new(Vec::with_capacity(initial_capacity(Some(10), max)));
        let mut want = Vec::new();
        for chunk in [&[1u8; 10][..], &[2; 300], &[3; 400], &[4; 290]] {
            append(&mut buf, chunk, max).expect("within max");
            want.extend_from_slice(chunk);
            assert_eq!(buf.as_slice(), want.as_slice());
            assert!(buf.capacity() <= max, "capacity {}", buf.capacity());
        }
        assert_eq!(buf.len(), max);
        // One byte more is refused, with the total, and the buffer is left as it was.
        assert_eq!(append(&mut buf, &[5], max), Err(1001));
        assert_eq!(buf.as_slice(), want.as_slice());
        assert!(buf.capacity() <= max);
        // A first chunk past max is refused before anything is reserved.
        let mut empty = Zeroizing::new(Vec::new());
        assert_eq!(append(&mut empty, &[0; 1001], max), Err(1001));
        assert_eq!(empty.capacity(), 0);
    }
}
