//! Handling one request: routing, readiness, and a KMS call from its SigV4 check to its
//! reply, including where its token work runs.
//!
//! Fast operations (tens of µs on a local token) run their token calls inline on the async
//! runtime's workers: a hand-off to another thread costs more than the call. Everything else,
//! and every request the control thread serves (see [`super::server`]), runs on the blocking
//! pool. Every token operation holds one of `pool size − 1` session permits (one session
//! stays free for upkeep), so no request ever waits inside the token layer for a session.

use std::convert::Infallible;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use tokio::sync::Semaphore;

use super::auth::{Authorizer, Credentials, Principal};
use super::body::{check_content_type, declared_length, read_body};
use super::completion::{Completion, Finished, KeysSeen, Notes};
use super::conns::Conns;
use super::error::ApiError;
use super::facts::Peer;
use super::operations::{execute, Caller, Op};
use super::response::{error_response, reply_response, request_id, text, with_type, Body};
use super::sigv4::{RequestParts, Trust, Verifier};
use super::{MetricsEndpoint, ServerSettings};
use crate::kms::{ArnScope, Kms};

/// How long a request may wait for a free token session before DependencyTimeoutException.
/// `User-Agent` values are cut here (in bytes) in audit records.
const MAX_USER_AGENT: usize = 512;
const QUEUE_TIMEOUT: Duration = Duration::from_secs(30);
/// `/readyz`'s token ping answers within this (waiting for a session permit included).
const READY_TIMEOUT: Duration = Duration::from_secs(2);
/// A token ping's outcome answers every `/readyz` for this long (see [`ReadyCache`]).
const READY_CACHE_FOR: Duration = Duration::from_secs(1);
/// Caches held this long mean a stuck writer: not ready.
const CACHES_HELD_FOR: Duration = Duration::from_millis(250);
/// A token call running longer than this means the token has stopped answering: not ready.
const STALLED_AFTER: Duration = Duration::from_secs(2);
/// Fast operations run on the runtime thread while they take less than this on average
/// (a local software token: tens of µs); above it (a network HSM), on the blocking pool.
const INLINE_MAX_NS: u64 = 250_000;
/// The main runtime is taken for stuck when its last heartbeat is older than this.
const STUCK_AFTER: Duration = Duration::from_millis(1000);

/// What every request needs, shared by both runtimes.
pub(super) struct State {
    kms: Arc<Kms>,
    verifier: Verifier,
    /// CI mode: the one principal every request acts as.
    ci_principal: Option<Arc<Principal>>,
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
    /// Moving average (ns) of how long each fast operation takes, wherever it ran (one per
    /// operation: RSA signing at ~0.5 ms must not push Encrypt off the inline path, nor the
    /// other way round).
    fast_op_ns: Vec<AtomicU64>,
    /// Open connections (the accept loop admits, each connection marks its requests).
    pub(super) conns: Arc<Conns>,
    /// The last `/readyz` token ping's outcome.
    ready: ReadyCache,
    /// Where finished KMS requests go (metrics, the request log line).
    completion: Completion,
    /// The audit trail (`None`: `audit = false`).
    audit: Option<Arc<crate::audit::AuditLog>>,
    /// What `GET /metrics` on this listener renders (`None`: not served here).
    pub(super) metrics_here: Option<Arc<prometheus_client::registry::Registry>>,
    /// The same registry, for a listener of its own (`metrics_listen`).
    pub(super) metrics_own: Option<Arc<prometheus_client::registry::Registry>>,
}

impl State {
    /// The state for `kms` and `settings` (whose TLS configuration the caller has taken).
    pub(super) fn new(kms: Arc<Kms>, settings: ServerSettings) -> State {
        let permits = settings
            .blocking_limit
            .unwrap_or_else(|| session_permits(kms.token().pool_size()))
            .max(1);
        settings.credentials.parse_allow_keys(kms.scope());
        let requests = (!matches!(settings.metrics, MetricsEndpoint::Off))
            .then(|| Arc::new(super::metrics::RequestMetrics::new()));
        let registry = requests
            .as_ref()
            .map(|r| Arc::new(super::metrics::registry(Arc::clone(&kms), Arc::clone(r))));
        let (metrics_here, metrics_own) = match settings.metrics {
            MetricsEndpoint::Main => (registry, None),
            MetricsEndpoint::Own(_) => (None, registry),
            MetricsEndpoint::Off => (None, None),
        };
        State {
            kms,
            verifier: Verifier::serving(
                settings.regions.clone(),
                if settings.ci_account.is_some() {
                    Trust::AnyCredentials
                } else {
                    Trust::Secrets
                },
                "kms",
            ),
            ci_principal: settings.ci_account.as_ref().map(|a| {
                Arc::new(Principal::new(
                    format!("arn:aws:iam::{a}:root"),
                    String::new(),
                    None,
                    None,
                ))
            }),
            credentials: settings.credentials,
            authorizer: settings.authorizer,
            max_body_bytes: settings.max_body_bytes,
            refresh_every_request: settings.refresh_every_request,
            sessions: Arc::new(Semaphore::new(permits)),
            heartbeat: AtomicU64::new(0),
            epoch: Instant::now(),
            fast_op_ns: Op::ALL.iter().map(|_| AtomicU64::new(0)).collect(),
            conns: Arc::new(Conns::new(
                settings.max_connections,
                settings.max_connections_per_source,
            )),
            ready: ReadyCache::new(READY_CACHE_FOR),
            completion: Completion { metrics: requests },
            audit: settings.audit,
            metrics_here,
            metrics_own,
        }
    }

    /// The main runtime's heartbeat (see [`State::main_runtime_alive`]).
    pub(super) fn tick(&self) {
        self.heartbeat.store(self.now_ms(), Ordering::Relaxed);
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether the main runtime has ticked recently (its workers are not all stuck).
    pub(super) fn main_runtime_alive(&self) -> bool {
        let last = self.heartbeat.load(Ordering::Relaxed);
        self.now_ms().saturating_sub(last) < STUCK_AFTER.as_millis() as u64
    }

    /// Records how long a fast operation took (exponential moving average, 1/16 weight).
    fn observe(&self, op: Op, took: Duration) {
        let Some(avg) = self.fast_op_ns.get(op.index()) else {
            return;
        };
        let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        let old = avg.load(Ordering::Relaxed);
        avg.store(old - old / 16 + ns / 16, Ordering::Relaxed);
    }

    /// Whether `op` has been fast enough lately to run inline.
    fn inline_worthy(&self, op: Op) -> bool {
        self.fast_op_ns
            .get(op.index())
            .is_some_and(|a| a.load(Ordering::Relaxed) < INLINE_MAX_NS)
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
            | Op::Sign
            | Op::Verify
            | Op::GenerateMac
            | Op::GenerateDataKeyPairWithoutPlaintext
            | Op::VerifyMac
            | Op::GetPublicKey
            | Op::DescribeKey
            | Op::ListKeys
            | Op::ListAliases
            | Op::ListGrants
            | Op::ListRetirableGrants
    )
}

/// Session permits for a pool of `pool` sessions: one stays free for upkeep (metadata
/// refresh, sweeps, destroying derived keys), so requests holding a permit never wait.
fn session_permits(pool: usize) -> usize {
    pool.saturating_sub(1).max(1)
}

pub(super) async fn handle(
    state: Arc<State>,
    req: Request<Incoming>,
    inline: bool,
    peer: Peer,
) -> Result<Response<Body>, Infallible> {
    let request_id = request_id();
    let started = Instant::now();
    let kms_call = req.method() == Method::POST && req.uri().path() == "/";
    let mut notes = Notes::default();
    let arrived = time::OffsetDateTime::now_utc();
    let mut routed = route(&state, req, &request_id, inline, peer, &mut notes).await;
    if kms_call {
        if let Some(log) = &state.audit {
            // The operation has run: its record goes to the writer before the answer leaves,
            // and a request that waits for it (a state change, by default) is answered once
            // it is written (docs/audit.md, "Before or after"). An operation the request did
            // not name (or named wrongly) changed nothing.
            let read_only = notes.op.is_none_or(|op| super::audit::read_only(op.name()));
            let written = match audit_record(
                &state,
                &notes,
                &request_id,
                routed.as_ref().err(),
                arrived,
                peer,
            ) {
                Ok(record) => super::audit::write(log, record, log.waits(read_only)).await,
                Err(e) => Err(e),
            };
            if let Err(e) = written {
                tracing::error!(target: "p11kms::audit", request_id = %request_id, "{e}");
                if super::audit::fails_request(log, read_only) && routed.is_ok() {
                    routed = Err(ApiError::internal(format!("audit record not written: {e}")));
                }
            }
        }
        state.completion.finished(&Finished {
            request_id: &request_id,
            op: notes.op,
            principal: notes.principal.as_deref(),
            keys: &notes.keys,
            error: routed.as_ref().err(),
            took: started.elapsed(),
            peer,
        });
    }
    let mut resp = match routed {
        Ok(r) => r,
        Err(e) => error_response(&e.for_client(&request_id)),
    };
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        resp.headers_mut().insert("x-amzn-requestid", v);
    }
    Ok(resp)
}

/// The audit record of a finished KMS request.
fn audit_record(
    state: &State,
    notes: &Notes,
    request_id: &str,
    error: Option<&ApiError>,
    arrived: time::OffsetDateTime,
    peer: Peer,
) -> Result<crate::audit::Record, crate::audit::AuditError> {
    let scope = state.kms.scope();
    // A 5xx's detail is for the log, as for the client.
    let generic = error
        .filter(|e| e.status.is_server_error())
        .map(|_| format!("the service failed (request {request_id})"));
    let error = error.map(|e| (e.name, generic.as_deref().unwrap_or(&e.message)));
    let source = peer.ip.map_or(
        super::audit::Source::Named("unknown"),
        super::audit::Source::Address,
    );
    super::audit::record(&super::audit::Event {
        op: notes.op.map_or("Unknown", Op::name),
        time: arrived,
        region: notes.region.as_deref().unwrap_or(&scope.region),
        account: &scope.account,
        source,
        user_agent: notes.user_agent.as_deref().unwrap_or(""),
        identity: notes.principal.as_deref().map(|p| super::audit::Identity {
            arn: &p.arn,
            access_key_id: &p.access_key_id,
        }),
        request: notes.params.as_ref(),
        response: notes.response.as_ref(),
        error,
        request_id,
        keys: &notes.keys,
    })
}

async fn route(
    state: &Arc<State>,
    req: Request<Incoming>,
    request_id: &str,
    inline: bool,
    peer: Peer,
    notes: &mut Notes,
) -> Result<Response<Body>, ApiError> {
    let path = req.uri().path();
    match (req.method(), path) {
        (&Method::POST, "/") => kms_request(state, req, request_id, inline, peer, notes).await,
        (&Method::GET | &Method::HEAD, "/healthz") => Ok(text(StatusCode::OK, "ok\n")),
        (&Method::GET | &Method::HEAD, "/metrics") if state.metrics_here.is_some() => {
            Ok(metrics_response(state.metrics_here.as_deref()))
        }
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
        (_, "/metrics") if state.metrics_here.is_some() => {
            let mut resp = error_response(&ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "UnknownOperationException",
                "/metrics answers GET only",
            ));
            resp.headers_mut()
                .insert(hyper::header::ALLOW, HeaderValue::from_static("GET, HEAD"));
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

/// One scrape of `registry` in the Prometheus text format.
pub(super) fn metrics_response(
    registry: Option<&prometheus_client::registry::Registry>,
) -> Response<Body> {
    let body = registry.map(super::metrics::render).unwrap_or_default();
    let r = Response::new(Full::new(Bytes::from(body)));
    with_type(r, "text/plain; version=0.0.4; charset=utf-8")
}

/// Ready when the service can do work now: no token call has been stuck for seconds, the
/// main runtime's workers are not all stuck, the caches are not held, and a token session
/// answers (through the session permits like any token call, within [`READY_TIMEOUT`]).
/// `/readyz` needs no credentials, so the ping's outcome is shared: at most one ping runs at
/// a time and its outcome answers for [`READY_CACHE_FOR`] (see [`ReadyCache`]); a flood of
/// `/readyz` cannot take the session permits KMS requests need. The other checks cost no
/// token call and are made every time.
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
    if !caches_free(&state.kms).await {
        return unavailable("not ready: the metadata caches are held\n".into());
    }
    let ping = || async {
        let kms = Arc::clone(&state.kms);
        let ping = run_blocking(state, READY_TIMEOUT, move || kms.token().ping().is_ok());
        matches!(
            tokio::time::timeout(READY_TIMEOUT, ping).await,
            Ok(Ok(true))
        )
    };
    if state.ready.check(ping).await {
        text(StatusCode::OK, "ready\n")
    } else {
        unavailable("not ready: the token does not answer\n".into())
    }
}

/// Whether the metadata caches can be read within [`CACHES_HELD_FOR`]. A writer holds them
/// for microseconds (and a waiting writer blocks new readers), so one look could find them
/// held on a healthy server; only caches held across all the looks mean not ready.
async fn caches_free(kms: &Kms) -> bool {
    let deadline = Instant::now() + CACHES_HELD_FOR;
    loop {
        if kms.responsive() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The outcome of the last readiness ping, reused for a while, with at most one ping in
/// flight: while one runs, other callers get the previous outcome at once (only before the
/// first outcome do they wait for it). The outcome is an atomic; the one lock is the async
/// mutex that makes a caller the pinger, held across its ping and nothing else.
struct ReadyCache {
    ttl: Duration,
    epoch: Instant,
    /// `(ms since epoch at which the ping finished + 1) << 1 | ok`; 0 before the first.
    last: AtomicU64,
    /// Held by the caller pinging now.
    pinging: tokio::sync::Mutex<()>,
}

impl ReadyCache {
    fn new(ttl: Duration) -> ReadyCache {
        ReadyCache {
            ttl,
            epoch: Instant::now(),
            last: AtomicU64::new(0),
            pinging: tokio::sync::Mutex::new(()),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX >> 2)
    }

    /// The last outcome: when it finished (ms since `epoch`) and whether the token answered.
    fn last(&self) -> Option<(u64, bool)> {
        match self.last.load(Ordering::Acquire) {
            0 => None,
            v => Some(((v >> 1) - 1, v & 1 == 1)),
        }
    }

    /// The last outcome if it is younger than `ttl`.
    fn fresh(&self) -> Option<bool> {
        let (at, ok) = self.last()?;
        (self.now_ms().saturating_sub(at) < self.ttl.as_millis() as u64).then_some(ok)
    }

    fn store(&self, ok: bool) {
        let at = self.now_ms().min(u64::MAX >> 2);
        self.last
            .store(((at + 1) << 1) | u64::from(ok), Ordering::Release);
    }

    /// Whether the token answers: the last outcome while it is fresh; else one caller runs
    /// `ping` (bounded by the caller) and stores its outcome, and the others meanwhile get the
    /// previous one.
    async fn check<F, Fut>(&self, ping: F) -> bool
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        if let Some(ok) = self.fresh() {
            return ok;
        }
        let _pinging = match self.pinging.try_lock() {
            Ok(g) => g,
            Err(_) => match self.last() {
                Some((_, ok)) => return ok,
                // Nothing to answer with yet: wait for the first ping's outcome.
                None => self.pinging.lock().await,
            },
        };
        // A ping may have finished between the first look and the lock.
        if let Some(ok) = self.fresh() {
            return ok;
        }
        let ok = ping().await;
        self.store(ok);
        ok
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
    peer: Peer,
    notes: &mut Notes,
) -> Result<Response<Body>, ApiError> {
    let (parts, mut body) = req.into_parts();
    // For the log line and metrics only: the request is refused below, in its usual order,
    // whatever this finds.
    notes.op = header_text(&parts.headers, "x-amz-target")
        .ok()
        .flatten()
        .and_then(|t| Op::from_target(Some(t)).ok());
    let audit = state.audit.is_some();
    if audit {
        notes.user_agent = header_text(&parts.headers, "user-agent")
            .ok()
            .flatten()
            .map(|u| super::error::prefix_within(u, MAX_USER_AGENT).to_owned());
    }
    let declared = declared_length(&parts.headers, &mut body, state.max_body_bytes).await?;
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
    };
    // Everything but the signature is checked before the body is read: without a known
    // access key, a client cannot make the server read (or buffer) a body at all.
    let checked =
        state
            .verifier
            .check_head(&head, &state.credentials, time::OffsetDateTime::now_utc())?;
    let op = Op::from_target(header_text(&parts.headers, "x-amz-target")?)?;
    check_content_type(&parts.headers)?;
    let body = read_body(body, declared, state.max_body_bytes).await?;
    let verified = checked.finish(&body)?;
    // Verified means the key id is in the store; a miss would be a race with nothing.
    let principal = match &state.ci_principal {
        Some(p) => Arc::clone(p),
        None => state
            .credentials
            .principal(&verified.access_key_id)
            .ok_or_else(|| ApiError::from(super::sigv4::AuthError::UnknownAccessKey))?,
    };
    notes.principal = Some(Arc::clone(&principal));
    if audit {
        notes.region = Some(verified.region.clone());
        notes.params = super::audit::request_parameters(&body);
    }

    let region = verified.region;
    let st = Arc::clone(state);
    let rid = request_id.to_owned();
    let work = move || {
        let span = tracing::info_span!("request", request_id = %rid, op = op.name());
        let _entered = span.enter();
        let keys = KeysSeen::default();
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
            if st.refresh_every_request {
                st.kms.refresh()?;
            }
            let caller = Caller {
                kms: &st.kms,
                authorizer: st.authorizer.as_ref(),
                principal: &principal,
                peer,
                scope: ArnScope::new(&region, principal.account(&st.kms)),
                serves: &|r: &str| st.verifier.serves(r),
                keys: &keys,
            };
            execute(&caller, op, &body)
        }));
        let result = result.unwrap_or_else(|_| {
            tracing::error!("the operation panicked");
            Err(ApiError::internal("internal error"))
        });
        (result, keys.into_inner())
    };
    let fast = fast_op(op) && !state.refresh_every_request;
    let inline = inline && fast && state.inline_worthy(op);
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
        state.observe(op, t0.elapsed());
        r
    } else {
        let st = Arc::clone(state);
        run_blocking(state, QUEUE_TIMEOUT, move || {
            let t0 = Instant::now();
            let r = work();
            if fast {
                st.observe(op, t0.elapsed());
            }
            r
        })
        .await?
    };
    let (outcome, keys) = outcome;
    notes.keys = keys;
    if let (true, Ok(super::operations::Reply::Json(buf))) = (audit, &outcome) {
        notes.response = super::audit::response_elements(op.name(), buf);
    }
    outcome.map(reply_response)
}

/// A permit of `sem` within `wait`, else `DependencyTimeoutException`.
async fn acquire(
    sem: &Arc<Semaphore>,
    wait: Duration,
) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
    match tokio::time::timeout(wait, Arc::clone(sem).acquire_owned()).await {
        Ok(Ok(p)) => Ok(p),
        _ => Err(ApiError::from(crate::KmsError::dependency_timeout(
            "All token sessions stayed busy; try again",
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// A ping that counts itself and takes `took`.
    async fn counted(pings: &AtomicUsize, took: Duration, ok: bool) -> bool {
        pings.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(took).await;
        ok
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_flood_of_readiness_checks_pings_once() {
        let cache = Arc::new(ReadyCache::new(Duration::from_secs(60)));
        let pings = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..200)
            .map(|_| {
                let (cache, pings) = (Arc::clone(&cache), Arc::clone(&pings));
                tokio::spawn(async move {
                    cache
                        .check(|| counted(&pings, Duration::from_millis(50), true))
                        .await
                })
            })
            .collect();
        for t in tasks {
            assert!(t.await.expect("task"), "every caller hears: ready");
        }
        assert_eq!(pings.load(Ordering::SeqCst), 1);
        // Cached: no further ping.
        assert!(cache.check(|| counted(&pings, Duration::ZERO, false)).await);
        assert_eq!(pings.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn outcomes_expire_and_a_ping_in_flight_is_not_waited_for() {
        let cache = Arc::new(ReadyCache::new(Duration::from_millis(100)));
        let pings = Arc::new(AtomicUsize::new(0));
        // A failure is cached like a success.
        assert!(!cache.check(|| counted(&pings, Duration::ZERO, false)).await);
        assert!(!cache.check(|| counted(&pings, Duration::ZERO, true)).await);
        assert_eq!(pings.load(Ordering::SeqCst), 1);
        tokio::time::sleep(Duration::from_millis(150)).await;
        // Expired: the next caller pings (slowly); meanwhile others get the old outcome at
        // once, without pinging.
        let slow = {
            let (cache, pings) = (Arc::clone(&cache), Arc::clone(&pings));
            tokio::spawn(async move {
                cache
                    .check(|| counted(&pings, Duration::from_millis(300), true))
                    .await
            })
        };
        while pings.load(Ordering::SeqCst) < 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let t0 = Instant::now();
        for _ in 0..50 {
            assert!(!cache.check(|| counted(&pings, Duration::ZERO, true)).await);
        }
        assert!(t0.elapsed() < Duration::from_millis(200), "nobody waited");
        assert!(slow.await.expect("task"));
        assert_eq!(pings.load(Ordering::SeqCst), 2);
        assert!(cache.check(|| counted(&pings, Duration::ZERO, false)).await);
        assert_eq!(pings.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_cancelled_ping_leaves_the_next_caller_to_ping() {
        let cache = ReadyCache::new(Duration::from_secs(60));
        let pings = AtomicUsize::new(0);
        let cut = tokio::time::timeout(
            Duration::from_millis(20),
            cache.check(|| counted(&pings, Duration::from_secs(10), true)),
        )
        .await;
        assert!(cut.is_err());
        assert!(!cache.check(|| counted(&pings, Duration::ZERO, false)).await);
        assert_eq!(pings.load(Ordering::SeqCst), 2);
    }
}
