//! HTTP/1.1 plumbing: accept loop, connection admission, TLS, routing, body limits, SigV4,
//! and where token work runs.
//!
//! Fast operations (tens of µs on a local token) run their token calls inline on the async
//! runtime's workers: a hand-off to another thread costs more than the call. If the token
//! stops answering, those workers are stuck, so the server does not depend on them to stay
//! alive: a **control thread** of its own accepts every connection and watches a heartbeat
//! that the main runtime ticks. While the heartbeat is fresh, connections are served on the
//! main runtime; while it is stale (every worker stuck in a token call, or anything else
//! that freezes it), the control thread serves new connections itself, never inline, so
//! `/healthz` answers, `/readyz` says not ready and KMS requests wait (bounded) for the
//! token. Every token operation holds one of `pool size − 1` session permits (one session
//! stays free for upkeep), so no request ever waits inside the token layer for a session.

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
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use zeroize::Zeroizing;

use super::auth::{Authorizer, Credentials};
use super::conns::{Admission, Conn, Conns};
use super::error::ApiError;
use super::operations::{execute, Caller, Op, Reply};
use super::sigv4::{RequestParts, Verifier};
use super::ServerSettings;
use crate::kms::Kms;

/// The content type of the AWS JSON 1.1 protocol (also what we answer with).
pub const AMZ_JSON: &str = "application/x-amz-json-1.1";
/// A request head must arrive within this; it is also how long an idle keep-alive connection
/// is kept (hyper times the wait for every head, the first and each next one).
const HEADER_TIMEOUT: Duration = Duration::from_secs(15);
const BODY_TIMEOUT: Duration = Duration::from_secs(20);
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a request may wait for a free token session before DependencyTimeoutException.
const QUEUE_TIMEOUT: Duration = Duration::from_secs(30);
/// `/readyz` answers within this.
const READY_TIMEOUT: Duration = Duration::from_secs(2);
/// A token call running longer than this means the token has stopped answering: not ready.
const STALLED_AFTER: Duration = Duration::from_secs(2);
/// Shutdown waits this long for in-flight requests, then gives up on them.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Fast operations run on the runtime thread while they take less than this on average
/// (a local software token: tens of µs); above it (a network HSM), on the blocking pool.
const INLINE_MAX_NS: u64 = 250_000;
/// An oversized body is read and discarded up to this much more, so the client (which is
/// usually still sending) gets the 413 instead of a connection reset.
const DISCARD_LIMIT: u64 = 1 << 20;
/// A KMS request head is a few hundred bytes (a session token adds a few KB). (hyper's
/// default of at most 100 headers stays: setting another count moves them to the heap.)
const MAX_HEAD_BYTES: usize = 16 * 1024;
/// The main runtime ticks its heartbeat this often...
const HEARTBEAT_EVERY: Duration = Duration::from_millis(100);
/// ...and is taken for stuck when the last tick is older than this.
const STUCK_AFTER: Duration = Duration::from_millis(1000);
/// hyper's read buffer (heads must fit in [`MAX_HEAD_BYTES`] of it; bodies stream through).
const READ_BUFFER: usize = 64 * 1024;

type Body = Full<Bytes>;

struct State {
    kms: Arc<Kms>,
    verifier: Verifier,
    credentials: Credentials,
    authorizer: Arc<dyn Authorizer>,
    max_body_bytes: usize,
    refresh_every_request: bool,
    /// Token operations in progress, wherever they run: at most one per session the pool
    /// can spare, so none ever waits inside the token layer.
    sessions: Arc<Semaphore>,
    /// The main runtime's last heartbeat, in ms since `epoch`.
    heartbeat: AtomicU64,
    epoch: Instant,
    /// Moving average (ns) of how long the fast operations take, wherever they ran.
    fast_op_ns: AtomicU64,
    conns: Arc<Conns>,
}

impl State {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether the main runtime has ticked recently (its workers are not all stuck).
    fn main_runtime_alive(&self) -> bool {
        let last = self.heartbeat.load(Ordering::Relaxed);
        self.now_ms().saturating_sub(last) < STUCK_AFTER.as_millis() as u64
    }

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

/// Session permits for a pool of `pool` sessions: one stays free for upkeep (metadata
/// refresh, sweeps, destroying derived keys), so requests holding a permit never wait.
fn session_permits(pool: usize) -> usize {
    pool.saturating_sub(1).max(1)
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
        .unwrap_or_else(|| session_permits(kms.token().pool_size()))
        .max(1);
    let tls = settings.tls.map(tokio_rustls::TlsAcceptor::from);
    let state = Arc::new(State {
        kms,
        verifier: Verifier::new(&settings.region, "kms"),
        credentials: settings.credentials,
        authorizer: settings.authorizer,
        max_body_bytes: settings.max_body_bytes,
        refresh_every_request: settings.refresh_every_request,
        sessions: Arc::new(Semaphore::new(permits)),
        heartbeat: AtomicU64::new(0),
        epoch: Instant::now(),
        fast_op_ns: AtomicU64::new(0),
        conns: Arc::new(Conns::new(
            settings.max_connections,
            settings.max_connections_per_source,
        )),
    });
    let main = tokio::runtime::Handle::current();
    let graceful = Arc::new(GracefulShutdown::new());
    let heartbeat = {
        let state = Arc::clone(&state);
        main.spawn(async move {
            let mut tick = tokio::time::interval(HEARTBEAT_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tick.tick().await;
                state.heartbeat.store(state.now_ms(), Ordering::Relaxed);
            }
        })
    };
    let listener = listener
        .into_std()
        .map_err(|e| crate::KmsError::Io(format!("cannot hand the listener over: {e}")))?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (stopped_tx, stopped_rx) = tokio::sync::oneshot::channel::<()>();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    let control = {
        let (state, graceful, main) = (Arc::clone(&state), Arc::clone(&graceful), main.clone());
        let signals = ControlSignals {
            stop: stop_rx,
            stopped: stopped_tx,
            done: done_rx,
        };
        std::thread::Builder::new()
            .name("p11kms-control".into())
            .spawn(move || control_thread(state, listener, tls, main, graceful, signals))
            .map_err(|e| crate::KmsError::Io(format!("cannot start the control thread: {e}")))?
    };
    shutdown.await;
    let _ = stop_tx.send(());
    // The control thread has stopped accepting and let go of the shutdown handle.
    let _ = stopped_rx.await;
    // Drain: connections on either runtime finish their requests (at most DRAIN_TIMEOUT).
    if let Ok(g) = Arc::try_unwrap(graceful) {
        if tokio::time::timeout(DRAIN_TIMEOUT, g.shutdown())
            .await
            .is_err()
        {
            tracing::warn!("gave up waiting for in-flight requests after {DRAIN_TIMEOUT:?}");
        }
    }
    heartbeat.abort();
    let _ = done_tx.send(());
    let _ = tokio::task::spawn_blocking(move || control.join()).await;
    Ok(())
}

/// How the main runtime stops the control thread: `stop` ends accepting; the thread answers
/// on `stopped` once it has let go of the shutdown handle; `done` ends the drain.
struct ControlSignals {
    stop: tokio::sync::oneshot::Receiver<()>,
    stopped: tokio::sync::oneshot::Sender<()>,
    done: tokio::sync::oneshot::Receiver<()>,
}

/// The control thread: a one-thread runtime that accepts connections (never waiting for
/// room), and serves them itself, without inline token work, while the main runtime is stuck.
fn control_thread(
    state: Arc<State>,
    listener: std::net::TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    main: tokio::runtime::Handle,
    graceful: Arc<GracefulShutdown>,
    signals: ControlSignals,
) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the control runtime: not accepting");
            return;
        }
    };
    rt.block_on(async move {
        let listener = match TcpListener::from_std(listener) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "cannot take the listener: not accepting");
                return;
            }
        };
        accept_loop(&state, &listener, tls, &main, &graceful, signals.stop).await;
        drop(listener);
        drop(graceful);
        let _ = signals.stopped.send(());
        // Keep driving this runtime's connections until the drain is over.
        let _ = signals.done.await;
    });
}

async fn accept_loop(
    state: &Arc<State>,
    listener: &TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    main: &tokio::runtime::Handle,
    graceful: &GracefulShutdown,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut stop => return,
            r = listener.accept() => match r {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Typically EMFILE (connections are shed before the descriptor limit, see
                    // `serve`): back off briefly instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        // A duplicate of the socket lets admission close this connection later, wherever it
        // is served (see `Conns`).
        let dup = std::os::fd::AsFd::as_fd(&stream)
            .try_clone_to_owned()
            .ok()
            .map(std::net::TcpStream::from);
        let admitted = match state.conns.admit(peer.ip(), dup) {
            Admission::Admit(a) => a,
            Admission::Refuse => {
                tokio::spawn(refuse(stream, tls.is_none()));
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let watcher = graceful.watcher();
        let state = Arc::clone(state);
        let tls = tls.clone();
        let on_main = state.main_runtime_alive();
        let connection = async move {
            // Registered with the reactor of the runtime that serves it.
            let Ok(stream) = stream.into_std().and_then(TcpStream::from_std) else {
                return;
            };
            let conn = &admitted.conn;
            match tls {
                None => serve_connection(stream, state, conn, watcher, on_main).await,
                Some(acceptor) => {
                    if let Ok(Ok(s)) =
                        tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await
                    {
                        serve_connection(s, state, conn, watcher, on_main).await;
                    }
                }
            }
            drop(admitted);
        };
        if on_main {
            main.spawn(connection);
        } else {
            tokio::spawn(connection);
        }
    }
}

/// Answers a connection that cannot be admitted (every connection is busy) without reading
/// from it: a throttling error the SDKs retry, then close. Over TLS, just close.
async fn refuse(mut stream: TcpStream, plain: bool) {
    if plain {
        let body = br#"{"__type":"ThrottlingException","message":"The server has too many connections; retry later"}"#;
        let head = format!(
            "HTTP/1.1 400 Bad Request\r\ncontent-type: {AMZ_JSON}\r\nx-amzn-errortype: \
             ThrottlingException\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        );
        let write = async {
            stream.write_all(head.as_bytes()).await?;
            stream.write_all(body).await?;
            stream.shutdown().await
        };
        let _ = tokio::time::timeout(Duration::from_secs(1), write).await;
    }
}

/// Serves one connection; `inline` says whether fast operations may run their token calls
/// on this runtime's thread (the main runtime) or must go to the blocking pool (the control
/// runtime, which must never be held up by the token).
async fn serve_connection<I>(
    io: I,
    state: Arc<State>,
    conn: &Arc<Conn>,
    watcher: Watcher,
    inline: bool,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let c = Arc::clone(conn);
    let svc = service_fn(move |req| {
        let busy = c.request(&state.conns);
        let state = Arc::clone(&state);
        async move {
            let r = handle(state, req, inline).await;
            drop(busy);
            r
        }
    });
    let mut builder = http1_builder();
    // A connection the control thread serves (the main runtime was stuck when it arrived)
    // answers one request and closes, so that the client's next connection goes back to
    // the main runtime once it has recovered.
    builder.keep_alive(inline);
    let conn = builder.serve_connection(TokioIo::new(io), svc);
    // Errors here are the peer's (reset, garbage before a request): nothing to answer.
    let _ = watcher.watch(conn).await;
}

/// The HTTP/1.1 settings of every connection (also the benchmark's floor server's).
pub(super) fn http1_builder() -> http1::Builder {
    let mut b = http1::Builder::new();
    b.timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(READ_BUFFER)
        .max_header_size(MAX_HEAD_BYTES)
        .keep_alive(true);
    b
}

async fn handle(
    state: Arc<State>,
    req: Request<Incoming>,
    inline: bool,
) -> Result<Response<Body>, Infallible> {
    let request_id = request_id();
    let mut resp = match route(&state, req, &request_id, inline).await {
        Ok(r) => r,
        Err(e) => error_response(&e.for_client(&request_id)),
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
    inline: bool,
) -> Result<Response<Body>, ApiError> {
    let path = req.uri().path();
    match (req.method(), path) {
        (&Method::POST, "/") => kms_request(state, req, request_id, inline).await,
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

/// Ready when the service can do work now: no token call has been stuck for seconds, the
/// main runtime's workers are not all stuck, the caches are not held, and a token session
/// answers (through the session permits like any
/// token call, within [`READY_TIMEOUT`]).
async fn readiness(state: &Arc<State>) -> Response<Body> {
    let unavailable = |why: String| {
        let mut r = Response::new(Full::new(Bytes::from(why)));
        *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        with_type(r, "text/plain; charset=utf-8")
    };
    if let Some(d) = state
        .kms
        .token()
        .longest_call()
        .filter(|d| *d > STALLED_AFTER)
    {
        return unavailable(format!(
            "not ready: a token call has been running for {} s\n",
            d.as_secs()
        ));
    }
    if !state.main_runtime_alive() {
        return unavailable("not ready: the server's workers are stuck\n".into());
    }
    if !state.kms.responsive() {
        return unavailable("not ready: the metadata caches are held\n".into());
    }
    let kms = Arc::clone(&state.kms);
    let ping = run_blocking(state, READY_TIMEOUT, move || kms.token().ping().is_ok());
    match tokio::time::timeout(READY_TIMEOUT, ping).await {
        Ok(Ok(true)) => text(StatusCode::OK, "ready\n"),
        _ => unavailable("not ready: the token does not answer\n".into()),
    }
}

fn header_text<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, ApiError> {
    match headers.get(name) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .map(Some)
            .map_err(|_| ApiError::unknown_operation(format!("{name} is not valid text"))),
    }
}

async fn kms_request(
    state: &Arc<State>,
    req: Request<Incoming>,
    request_id: &str,
    inline: bool,
) -> Result<Response<Body>, ApiError> {
    let (parts, mut body) = req.into_parts();
    let declared = content_length(&parts.headers)?;
    if let Some(n) = declared.filter(|n| *n > state.max_body_bytes as u64) {
        // Refused on its declared size alone; the rest is read and thrown away (bounded, not
        // buffered) so that a client still sending sees the answer.
        if n <= state.max_body_bytes as u64 + DISCARD_LIMIT {
            discard(&mut body, n).await;
        }
        return Err(too_large(n, state.max_body_bytes));
    }
    let headers: Vec<(&str, &[u8])> = parts
        .headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_bytes()))
        .collect();
    let head = RequestParts {
        method: parts.method.as_str(),
        path: parts.uri.path(),
        query: parts.uri.query().unwrap_or(""),
        headers: &headers,
        body: b"",
    };
    // Everything but the signature is checked before the body is read: without a known
    // access key, a client cannot make the server read (or buffer) a body at all.
    let checked =
        state
            .verifier
            .check_head(&head, &state.credentials, time::OffsetDateTime::now_utc())?;
    let op = Op::from_target(header_text(&parts.headers, "x-amz-target")?)?;
    check_content_type(&parts.headers)?;
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
    let verified = checked.finish(&body)?;
    // Verified means the key id is in the store; a miss would be a race with nothing.
    let principal = state
        .credentials
        .principal(&verified.access_key_id)
        .ok_or_else(|| ApiError::from(super::sigv4::AuthError::UnknownAccessKey))?;

    let st = Arc::clone(state);
    let rid = request_id.to_owned();
    let work = move || {
        let span = tracing::info_span!("request", request_id = %rid, op = op.name());
        let _entered = span.enter();
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
            tracing::error!("the operation panicked");
            Err(ApiError::internal("internal error"))
        })
    };
    let fast = fast_op(op) && !state.refresh_every_request;
    let inline = inline && fast && state.fast_op_ns.load(Ordering::Relaxed) < INLINE_MAX_NS;
    let outcome = if inline {
        // The wait for a permit is async (it holds no worker) and bounded; the token work then
        // runs right here.
        let session = match Arc::clone(&state.sessions).try_acquire_owned() {
            Ok(p) => p,
            Err(_) => acquire(&state.sessions, QUEUE_TIMEOUT).await?,
        };
        let t0 = Instant::now();
        let r = work();
        drop(session);
        state.observe(t0.elapsed());
        r
    } else {
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
    };
    outcome.map(reply_response)
}

/// A permit of `sem` within `wait`, else `DependencyTimeoutException`.
async fn acquire(
    sem: &Arc<Semaphore>,
    wait: Duration,
) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
    match tokio::time::timeout(wait, Arc::clone(sem).acquire_owned()).await {
        Ok(Ok(p)) => Ok(p),
        _ => Err(ApiError::from(crate::KmsError::DependencyTimeout(
            "All token sessions stayed busy; try again".into(),
        ))),
    }
}

/// Runs `f` on the blocking pool once a session permit is free (at most `wait` for one).
async fn run_blocking<T, F>(state: &Arc<State>, wait: Duration, f: F) -> Result<T, ApiError>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let permit = acquire(&state.sessions, wait).await?;
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        f()
    })
    .await
    .map_err(|_| ApiError::internal("internal error"))
}

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
async fn read_body(
    mut body: Incoming,
    declared: Option<u64>,
    max: usize,
) -> Result<Zeroizing<Vec<u8>>, ApiError> {
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
            discard(&mut body, max as u64 + DISCARD_LIMIT).await;
            return Err(too_large(total as u64, max));
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
