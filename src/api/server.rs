//! HTTP/1.1 plumbing: the accept loop, connection admission, TLS, and the connections
//! themselves (request handling is in [`super::request`]).
//!
//! Fast operations run their token calls inline on the main runtime's workers (see
//! [`super::request`]). If the token stops answering, those workers are stuck, so the server
//! does not depend on them to stay alive: a **control thread** of its own accepts every
//! connection and watches a heartbeat that the main runtime ticks. While the heartbeat is
//! fresh, connections are served on the main runtime; while it is stale (every worker stuck
//! in a token call, or anything else that freezes it), the control thread serves new
//! connections itself, never inline, so `/healthz` answers, `/readyz` says not ready and KMS
//! requests wait for the token. What bounds that wait is the queue for a session permit
//! (`QUEUE_TIMEOUT` in [`super::request`], then DependencyTimeoutException); a token call
//! that has started has no deadline of its own and returns when the token does.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;

use super::facts::Peer;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::conns::{Admission, Conn};
use super::request::{handle, State};
use super::response::AMZ_JSON;
use super::ServerSettings;
use crate::kms::Kms;

/// A request head must arrive within this; it is also how long an idle keep-alive connection
/// is kept (hyper times the wait for every head, the first and each next one).
const HEADER_TIMEOUT: Duration = Duration::from_secs(15);
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Shutdown waits this long for in-flight requests, then gives up on them.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// A KMS request head is a few hundred bytes (a session token adds a few KB). (hyper's
/// default of at most 100 headers stays: setting another count moves them to the heap.)
const MAX_HEAD_BYTES: usize = 16 * 1024;
/// The main runtime ticks its heartbeat this often (it is taken for stuck when the last tick
/// is ten times older: `STUCK_AFTER` in [`super::request`]).
const HEARTBEAT_EVERY: Duration = Duration::from_millis(100);
/// hyper's read buffer (heads must fit in [`MAX_HEAD_BYTES`] of it; bodies stream through).
const READ_BUFFER: usize = 64 * 1024;

pub(super) async fn run<F>(
    kms: Arc<Kms>,
    mut settings: ServerSettings,
    listener: TcpListener,
    shutdown: F,
) -> crate::Result<()>
where
    F: Future<Output = ()> + Send,
{
    let tls = settings.tls.take().map(tokio_rustls::TlsAcceptor::from);
    let metrics_listener = match &settings.metrics {
        super::MetricsEndpoint::Own(l) => {
            Some(l.try_clone().and_then(TcpListener::from_std).map_err(|e| {
                crate::KmsError::io(format!("cannot use the metrics listener: {e}"))
            })?)
        }
        _ => None,
    };
    let state = Arc::new(State::new(kms, settings));
    let main = tokio::runtime::Handle::current();
    let metrics_server = match (metrics_listener, &state.metrics_own) {
        (Some(l), Some(registry)) => Some(main.spawn(metrics_loop(l, Arc::clone(registry)))),
        _ => None,
    };
    let graceful = Arc::new(GracefulShutdown::new());
    let heartbeat = {
        let state = Arc::clone(&state);
        main.spawn(async move {
            let mut tick = tokio::time::interval(HEARTBEAT_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tick.tick().await;
                state.tick();
            }
        })
    };
    let listener = listener
        .into_std()
        .map_err(|e| crate::KmsError::io(format!("cannot hand the listener over: {e}")))?;
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
            .map_err(|e| crate::KmsError::io(format!("cannot start the control thread: {e}")))?
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
    if let Some(m) = metrics_server {
        m.abort();
    }
    let _ = done_tx.send(());
    let _ = tokio::task::spawn_blocking(move || control.join()).await;
    Ok(())
}

/// Connections the metrics listener serves at once (a scraper needs one; more are closed).
const METRICS_CONNECTIONS: usize = 8;

/// The metrics listener (`metrics_listen`): `GET /metrics` and `/healthz`, nothing else, on
/// the main runtime (a scrape makes no token call).
async fn metrics_loop(listener: TcpListener, registry: Arc<prometheus_client::registry::Registry>) {
    let permits = Arc::new(tokio::sync::Semaphore::new(METRICS_CONNECTIONS));
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(_) => {
                // Out of descriptors, or a connection reset before accept: try again shortly.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            continue;
        };
        let registry = Arc::clone(&registry);
        tokio::spawn(async move {
            let _permit = permit;
            let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let registry = Arc::clone(&registry);
                async move {
                    let get = matches!(*req.method(), hyper::Method::GET | hyper::Method::HEAD);
                    let resp = match req.uri().path() {
                        "/metrics" if get => super::request::metrics_response(Some(&registry)),
                        "/healthz" if get => super::response::text(hyper::StatusCode::OK, "ok\n"),
                        _ => super::response::text(
                            hyper::StatusCode::NOT_FOUND,
                            "this listener serves GET /metrics and /healthz only\n",
                        ),
                    };
                    Ok::<_, std::convert::Infallible>(resp)
                }
            });
            let conn = http1_builder().serve_connection(TokioIo::new(stream), svc);
            let _ = tokio::time::timeout(Duration::from_secs(60), conn).await;
        });
    }
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
                None => serve_connection(stream, state, conn, watcher, on_main, false).await,
                Some(acceptor) => {
                    if let Ok(Ok(s)) =
                        tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await
                    {
                        serve_connection(s, state, conn, watcher, on_main, true).await;
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
    tls: bool,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let c = Arc::clone(conn);
    let peer = Peer {
        ip: Some(conn.peer()),
        tls,
    };
    let svc = service_fn(move |req| {
        let busy = c.request(&state.conns);
        let state = Arc::clone(&state);
        async move {
            let r = handle(state, req, inline, peer).await;
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
