//! HTTP/1.1 plumbing: accept loop, TLS, routing, body limits, SigV4, and the bounded blocking
//! pool that every token call runs on.

use std::convert::Infallible;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderValue, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use zeroize::Zeroizing;

use super::auth::{Authorizer, Credentials};
use super::error::ApiError;
use super::operations::{execute, Caller, Op, Reply};
use super::sigv4::{RequestParts, Verifier};
use super::ServerSettings;
use crate::kms::Kms;

/// The content type of the AWS JSON 1.1 protocol (also what we answer with).
pub const AMZ_JSON: &str = "application/x-amz-json-1.1";
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
const BODY_TIMEOUT: Duration = Duration::from_secs(60);
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a request may wait for a free token session before DependencyTimeoutException.
const QUEUE_TIMEOUT: Duration = Duration::from_secs(30);
const READY_TIMEOUT: Duration = Duration::from_secs(5);
/// Shutdown waits this long for in-flight requests, then gives up on them.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
const MAX_CONNECTIONS: usize = 1024;
/// Fast operations run on the runtime thread while they take less than this on average
/// (a local software token: tens of µs); above it (a network HSM), on the blocking pool.
const INLINE_MAX_NS: u64 = 250_000;
/// An oversized body is read and discarded up to this much more, so the client (which is
/// usually still sending) gets the 413 instead of a connection reset.
const DISCARD_LIMIT: u64 = 8 << 20;

type Body = Full<Bytes>;

struct State {
    kms: Arc<Kms>,
    verifier: Verifier,
    credentials: Credentials,
    authorizer: Arc<dyn Authorizer>,
    max_body_bytes: usize,
    refresh_every_request: bool,
    /// Permits = token sessions: blocking work never queues inside the token pool.
    blocking: Arc<Semaphore>,
    /// Moving average (ns) of how long the fast operations take, wherever they ran.
    fast_op_ns: AtomicU64,
}

impl State {
    /// Records how long a fast operation took (exponential moving average, 1/16 weight).
    fn observe(&self, took: Duration) {
        let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        let old = self.fast_op_ns.load(Ordering::Relaxed);
        let new = old - old / 16 + ns / 16;
        self.fast_op_ns.store(new, Ordering::Relaxed);
    }
}

/// Operations whose token work is one to three short calls (no token writes, no re-listing):
/// candidates to run inline. On a local software token they take tens of microseconds, less
/// than handing them to the blocking pool costs (two thread wake-ups and context switches).
fn fast_op(op: Op) -> bool {
    matches!(
        op,
        Op::Encrypt
            | Op::Decrypt
            | Op::ReEncrypt
            | Op::GenerateDataKey
            | Op::GenerateDataKeyWithoutPlaintext
            | Op::GenerateRandom
            | Op::DescribeKey
            | Op::ListKeys
            | Op::ListAliases
    )
}

pub(super) async fn run<F>(
    kms: Arc<Kms>,
    settings: ServerSettings,
    listener: TcpListener,
    shutdown: F,
) -> crate::Result<()>
where
    F: Future<Output = ()> + Send,
{
    let permits = settings
        .blocking_limit
        .unwrap_or_else(|| kms.token().pool_size())
        .max(1);
    let tls = settings.tls.map(tokio_rustls::TlsAcceptor::from);
    let state = Arc::new(State {
        kms,
        verifier: Verifier::new(&settings.region, "kms"),
        credentials: settings.credentials,
        authorizer: settings.authorizer,
        max_body_bytes: settings.max_body_bytes,
        refresh_every_request: settings.refresh_every_request,
        blocking: Arc::new(Semaphore::new(permits)),
        fast_op_ns: AtomicU64::new(0),
    });
    let graceful = GracefulShutdown::new();
    let connections = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            () = &mut shutdown => break,
            p = Arc::clone(&connections).acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break, // never closed
            },
        };
        let stream = tokio::select! {
            () = &mut shutdown => break,
            r = listener.accept() => match r {
                Ok((stream, _peer)) => stream,
                Err(e) => {
                    // Typically EMFILE: back off instead of spinning.
                    eprintln!("p11kms: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let watcher = graceful.watcher();
        let state = Arc::clone(&state);
        let tls = tls.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match tls {
                None => serve_connection(stream, state, watcher).await,
                Some(acceptor) => {
                    if let Ok(Ok(s)) =
                        tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await
                    {
                        serve_connection(s, state, watcher).await;
                    }
                }
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        eprintln!("p11kms: gave up waiting for in-flight requests after {DRAIN_TIMEOUT:?}");
    }
    Ok(())
}

async fn serve_connection<I>(io: I, state: Arc<State>, watcher: Watcher)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = service_fn(move |req| handle(Arc::clone(&state), req));
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .keep_alive(true)
        .serve_connection(TokioIo::new(io), svc);
    // Errors here are the peer's (reset, garbage before a request): nothing to answer.
    let _ = watcher.watch(conn).await;
}

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let request_id = request_id();
    let mut resp = match route(&state, req, &request_id).await {
        Ok(r) => r,
        Err(e) => error_response(&e),
    };
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        resp.headers_mut().insert("x-amzn-requestid", v);
    }
    Ok(resp)
}

async fn route(
    state: &Arc<State>,
    req: Request<Incoming>,
    request_id: &str,
) -> Result<Response<Body>, ApiError> {
    let path = req.uri().path();
    match (req.method(), path) {
        (&Method::POST, "/") => kms_request(state, req, request_id).await,
        (&Method::GET | &Method::HEAD, "/healthz") => Ok(text(StatusCode::OK, "ok\n")),
        (&Method::GET | &Method::HEAD, "/readyz") => Ok(readiness(state).await),
        (_, "/") => {
            let mut resp = error_response(&ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "UnknownOperationException",
                format!(
                    "{} / is not an operation: AWS KMS requests are POST / with X-Amz-Target",
                    req.method()
                ),
            ));
            resp.headers_mut()
                .insert(hyper::header::ALLOW, HeaderValue::from_static("POST"));
            Ok(resp)
        }
        (_, "/healthz" | "/readyz") => {
            let mut resp = error_response(&ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "UnknownOperationException",
                format!("{path} answers GET only"),
            ));
            resp.headers_mut()
                .insert(hyper::header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            Ok(resp)
        }
        _ => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "UnknownOperationException",
            "No such resource: AWS KMS requests are POST / with X-Amz-Target",
        )),
    }
}

/// Ready when a token session answers. Goes through the blocking pool like any token call.
async fn readiness(state: &Arc<State>) -> Response<Body> {
    let kms = Arc::clone(&state.kms);
    let ok = run_blocking(state, READY_TIMEOUT, move || kms.token().ping().is_ok()).await;
    match ok {
        Ok(true) => text(StatusCode::OK, "ready\n"),
        _ => text(StatusCode::SERVICE_UNAVAILABLE, "token not ready\n"),
    }
}

async fn kms_request(
    state: &Arc<State>,
    req: Request<Incoming>,
    request_id: &str,
) -> Result<Response<Body>, ApiError> {
    let (parts, body) = req.into_parts();
    let declared = content_length(&parts.headers)?;
    let body = match tokio::time::timeout(
        BODY_TIMEOUT,
        read_body(body, declared, state.max_body_bytes),
    )
    .await
    {
        Ok(b) => b?,
        Err(_) => {
            return Err(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "RequestTimeoutException",
                format!("The request body was not received within {BODY_TIMEOUT:?}"),
            ))
        }
    };

    let headers: Vec<(&str, &[u8])> = parts
        .headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_bytes()))
        .collect();
    let request = RequestParts {
        method: parts.method.as_str(),
        path: parts.uri.path(),
        query: parts.uri.query().unwrap_or(""),
        headers: &headers,
        body: &body,
    };
    let verified = state.verifier.verify(
        &request,
        &state.credentials,
        time::OffsetDateTime::now_utc(),
    )?;
    // Verified means the key id is in the store; a miss would be a race with nothing.
    let principal = state
        .credentials
        .principal(&verified.access_key_id)
        .ok_or_else(|| ApiError::from(super::sigv4::AuthError::UnknownAccessKey))?;

    let target = match parts.headers.get("x-amz-target") {
        None => None,
        Some(v) => Some(
            v.to_str()
                .map_err(|_| ApiError::unknown_operation("X-Amz-Target is not valid text"))?,
        ),
    };
    let op = Op::from_target(target)?;
    check_content_type(&parts.headers)?;

    let st = Arc::clone(state);
    let rid = request_id.to_owned();
    let work = move || {
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
            if st.refresh_every_request {
                st.kms.refresh()?;
            }
            let caller = Caller {
                kms: &st.kms,
                authorizer: st.authorizer.as_ref(),
                principal: &principal,
            };
            execute(&caller, op, &body)
        }));
        result.unwrap_or_else(|_| {
            eprintln!("p11kms: request {rid}: {} panicked", op.name());
            Err(ApiError::internal("internal error"))
        })
    };
    let fast = fast_op(op) && !state.refresh_every_request;
    let inline = fast && state.fast_op_ns.load(Ordering::Relaxed) < INLINE_MAX_NS;
    // Inline only with a free session permit: never more token calls than sessions.
    let permit = if inline {
        Arc::clone(&state.blocking).try_acquire_owned().ok()
    } else {
        None
    };
    let outcome = match permit {
        Some(permit) => {
            let t0 = Instant::now();
            let r = work();
            drop(permit);
            state.observe(t0.elapsed());
            r
        }
        None => {
            let st = Arc::clone(state);
            run_blocking(state, QUEUE_TIMEOUT, move || {
                let t0 = Instant::now();
                let r = work();
                if fast {
                    st.observe(t0.elapsed());
                }
                r
            })
            .await?
        }
    };
    match outcome {
        Ok(reply) => Ok(reply_response(reply)),
        Err(e) => {
            if e.status.is_server_error() {
                eprintln!(
                    "p11kms: request {request_id}: {} failed: {}: {}",
                    op.name(),
                    e.name,
                    e.message
                );
            }
            Err(e)
        }
    }
}

/// Runs `f` on the blocking pool once a session permit is free (at most `wait` for one).
async fn run_blocking<T, F>(state: &Arc<State>, wait: Duration, f: F) -> Result<T, ApiError>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let permit = match tokio::time::timeout(wait, Arc::clone(&state.blocking).acquire_owned()).await
    {
        Ok(Ok(p)) => p,
        _ => {
            return Err(ApiError::from(crate::KmsError::DependencyTimeout(
                "All token sessions stayed busy; try again".into(),
            )))
        }
    };
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        f()
    })
    .await
    .map_err(|_| ApiError::internal("internal error"))
}

/// A request id in UUID form without a system call per request: a random per-process base
/// plus a counter (ids need to be unique, not unpredictable).
fn request_id() -> String {
    static BASE: std::sync::OnceLock<u128> = std::sync::OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let base = *BASE.get_or_init(|| uuid::Uuid::new_v4().as_u128());
    let n = u128::from(NEXT.fetch_add(1, Ordering::Relaxed));
    uuid::Builder::from_random_bytes((base.wrapping_add(n << 64 | n)).to_be_bytes())
        .into_uuid()
        .to_string()
}

fn content_length(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    match headers.get(CONTENT_LENGTH) {
        None => Ok(None),
        // hyper has already rejected malformed or conflicting lengths.
        Some(v) => Ok(v.to_str().ok().and_then(|s| s.parse().ok())),
    }
}

/// The body, at most `max` bytes, in a buffer that is zeroized when dropped (it may carry
/// plaintext). Oversized bodies are discarded and answered 413.
async fn read_body(
    mut body: Incoming,
    declared: Option<u64>,
    max: usize,
) -> Result<Zeroizing<Vec<u8>>, ApiError> {
    let max_u64 = max as u64;
    let too_large = |n: u64| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "ValidationException",
            format!("The request body ({n} bytes or more) exceeds the limit of {max} bytes"),
        )
    };
    if let Some(n) = declared {
        if n > max_u64 {
            if n <= max_u64 + DISCARD_LIMIT {
                discard(&mut body, n).await;
            }
            return Err(too_large(n));
        }
    }
    let mut buf = Zeroizing::new(Vec::with_capacity(
        declared.map_or(0, |n| n as usize).min(max),
    ));
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            ApiError::serialization(format!("Could not read the request body: {e}"))
        })?;
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        let total = buf.len() + data.len();
        if total > max {
            discard(&mut body, max_u64 + DISCARD_LIMIT).await;
            return Err(too_large(total as u64));
        }
        if total > buf.capacity() {
            // Grow by hand so the old allocation is zeroized, not just freed.
            let mut bigger = Zeroizing::new(Vec::with_capacity(total.max(buf.capacity() * 2)));
            bigger.extend_from_slice(&buf);
            buf = bigger;
        }
        buf.extend_from_slice(&data);
    }
    Ok(buf)
}

async fn discard(body: &mut Incoming, limit: u64) {
    let mut seen = 0u64;
    while let Some(Ok(frame)) = body.frame().await {
        if let Some(d) = frame.data_ref() {
            seen += d.len() as u64;
        }
        if seen > limit {
            break;
        }
    }
}

/// AWS JSON bodies; `application/json` is accepted too, and a missing type is tolerated.
fn check_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
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

fn reply_response(reply: Reply) -> Response<Body> {
    let body = match reply {
        Reply::Empty => Bytes::new(),
        // The buffer is zeroized when hyper drops the last reference to it.
        Reply::Json(buf) => Bytes::from_owner(buf),
    };
    with_type(Response::new(Full::new(body)), AMZ_JSON)
}

fn error_response(e: &ApiError) -> Response<Body> {
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

fn text(status: StatusCode, s: &'static str) -> Response<Body> {
    let mut resp = with_type(
        Response::new(Full::new(Bytes::from_static(s.as_bytes()))),
        "text/plain; charset=utf-8",
    );
    *resp.status_mut() = status;
    resp
}

fn with_type(mut resp: Response<Body>, content_type: &'static str) -> Response<Body> {
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn error_headers() {
        let e = ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "ValidationException", "big");
        let r = error_response(&e);
        assert_eq!(r.status(), 413);
        assert_eq!(r.headers()["x-amzn-errortype"], "ValidationException");
        assert_eq!(r.headers()[CONTENT_TYPE], AMZ_JSON);
        assert_eq!(r.headers()[CONNECTION], "close");
    }
}
