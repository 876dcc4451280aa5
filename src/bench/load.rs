//! The HTTP load generator: `concurrency` keep-alive connections to a `p11kms serve`, each
//! sending SigV4-signed requests back to back, on one single-threaded tokio runtime (so the
//! generator uses at most one core of the machine it shares with the server).
//!
//! The HTTP/1.1 client is hand-rolled and minimal (one write per request, one buffer per
//! connection, `Content-Length` bodies only, which is all the server sends): on a 2-core
//! machine every microsecond the generator spends is taken from the server it measures.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use std::io::Write as _;

use super::procfs;
use super::sign::{amz_date, sha256_hex, Signer, CONTENT_TYPE};

/// One request kind: its `X-Amz-Target` and the bodies to cycle through.
pub struct Workload {
    pub target: String,
    bodies: Vec<(Bytes, String)>,
}

impl Workload {
    pub fn new(operation: &str, bodies: Vec<Vec<u8>>) -> Workload {
        Workload {
            target: format!("TrentService.{operation}"),
            bodies: bodies
                .into_iter()
                .map(|b| {
                    let h = sha256_hex(&b);
                    (Bytes::from(b), h)
                })
                .collect(),
        }
    }
}

/// What one cell measured, over its measuring window only (the warm-up is discarded).
#[derive(Debug, Default)]
pub struct CellResult {
    pub ops: u64,
    pub window: Duration,
    pub latencies_ns: Vec<u64>,
    pub errors: u64,
    pub first_error: Option<String>,
    /// CPU time of the server process during the window.
    pub server_cpu: Option<Duration>,
    /// CPU time of this process (the load generator) during the window.
    pub client_cpu: Option<Duration>,
}

struct Timing {
    measure_from: Instant,
    end: Instant,
}

#[derive(Default)]
struct WorkerOut {
    ops: u64,
    latencies_ns: Vec<u64>,
    errors: u64,
    first_error: Option<String>,
}

/// The server under load and where the generator reports.
pub struct Target<'a> {
    pub addr: SocketAddr,
    pub signer: &'a Signer,
    pub server_pid: u32,
    /// Bumped once per successful request (for the live display).
    pub progress: &'a Arc<AtomicU64>,
}

/// Runs one cell: `concurrency` connections for `warmup + measure`.
pub fn run_cell(
    target: &Target<'_>,
    work: &Arc<Workload>,
    concurrency: usize,
    warmup: Duration,
    measure: Duration,
) -> CellResult {
    let (addr, signer, server_pid, progress) = (
        target.addr,
        target.signer,
        target.server_pid,
        target.progress,
    );
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            return CellResult {
                errors: 1,
                first_error: Some(format!("cannot start a runtime: {e}")),
                ..Default::default()
            }
        }
    };
    rt.block_on(async {
        let start = Instant::now();
        let timing = Arc::new(Timing {
            measure_from: start + warmup,
            end: start + warmup + measure,
        });
        let mut tasks = Vec::with_capacity(concurrency);
        for i in 0..concurrency {
            let mut signer = signer.clone();
            let work = Arc::clone(work);
            let timing = Arc::clone(&timing);
            let progress = Arc::clone(progress);
            tasks.push(tokio::spawn(async move {
                worker(addr, &mut signer, &work, i, &timing, &progress).await
            }));
        }
        // CPU samples at the window's edges.
        tokio::time::sleep_until(timing.measure_from.into()).await;
        let s0 = procfs::cpu_time(Some(server_pid));
        let c0 = procfs::cpu_time(None);
        let t0 = Instant::now();
        tokio::time::sleep_until(timing.end.into()).await;
        let s1 = procfs::cpu_time(Some(server_pid));
        let c1 = procfs::cpu_time(None);
        let window = t0.elapsed();
        let mut out = CellResult {
            window,
            server_cpu: s0.zip(s1).map(|(a, b)| b.saturating_sub(a)),
            client_cpu: c0.zip(c1).map(|(a, b)| b.saturating_sub(a)),
            ..Default::default()
        };
        for t in tasks {
            match t.await {
                Ok(w) => {
                    out.ops += w.ops;
                    out.latencies_ns.extend(w.latencies_ns);
                    out.errors += w.errors;
                    if out.first_error.is_none() {
                        out.first_error = w.first_error;
                    }
                }
                Err(e) => {
                    out.errors += 1;
                    out.first_error
                        .get_or_insert_with(|| format!("worker failed: {e}"));
                }
            }
        }
        out
    })
}

/// Sends one request on a new connection and returns the HTTP status (for polling).
pub fn one_request(target: &Target<'_>, work: &Workload) -> Result<u16, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a runtime: {e}"))?;
    rt.block_on(async {
        let mut conn = connect(target.addr).await?;
        let mut signer = target.signer.clone();
        let (body, hash) = work.bodies.first().ok_or("no request body")?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let date = amz_date(now);
        let auth = signer.authorization(&date, &work.target, hash);
        let mut request = format!(
            "POST / HTTP/1.1\r\nhost: {}\r\ncontent-type: {CONTENT_TYPE}\r\nx-amz-date: {date}\r\n\
             x-amz-target: {}\r\nauthorization: {auth}\r\ncontent-length: {}\r\n\r\n",
            signer.host(),
            work.target,
            body.len()
        )
        .into_bytes();
        request.extend_from_slice(body);
        let mut buf = Vec::new();
        exchange(&mut conn, &request, &mut buf)
            .await
            .map(|(status, _, _)| status)
    })
}

async fn connect(addr: SocketAddr) -> Result<TcpStream, String> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// Where the header block ends (index after `\r\n\r\n`).
fn header_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// Status code, `Content-Length` and whether the server will close, from a header block.
fn parse_head(head: &[u8]) -> Result<(u16, usize, bool), String> {
    let text = std::str::from_utf8(head).map_err(|_| "response head is not text".to_owned())?;
    let mut lines = text.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| "bad status line".to_owned())?;
    let (mut len, mut close) = (None, false);
    for l in lines {
        if let Some((name, value)) = l.split_once(':') {
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                len = value.parse().ok();
            } else if name.eq_ignore_ascii_case("connection") && value.eq_ignore_ascii_case("close")
            {
                close = true;
            }
        }
    }
    Ok((status, len.ok_or("response without Content-Length")?, close))
}

/// One request/response on a keep-alive connection; `buf` is reused between calls.
async fn exchange(
    stream: &mut TcpStream,
    request: &[u8],
    buf: &mut Vec<u8>,
) -> Result<(u16, Vec<u8>, bool), String> {
    stream
        .write_all(request)
        .await
        .map_err(|e| format!("send: {e}"))?;
    buf.clear();
    let mut chunk = [0u8; 8192];
    let (head_len, status, body_len, close) = loop {
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| format!("receive: {e}"))?;
        if n == 0 {
            return Err("connection closed by the server".into());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = header_end(buf) {
            let (status, len, close) = parse_head(&buf[..end])?;
            break (end, status, len, close);
        }
    };
    while buf.len() < head_len + body_len {
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| format!("receive: {e}"))?;
        if n == 0 {
            return Err("connection closed mid-body".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok((status, buf[head_len..head_len + body_len].to_vec(), close))
}

async fn worker(
    addr: SocketAddr,
    signer: &mut Signer,
    work: &Workload,
    index: usize,
    timing: &Timing,
    progress: &AtomicU64,
) -> WorkerOut {
    let mut out = WorkerOut {
        latencies_ns: Vec::with_capacity(1 << 14),
        ..Default::default()
    };
    let fail = |out: &mut WorkerOut, e: String, counted: bool| {
        if counted {
            out.errors += 1;
        }
        out.first_error.get_or_insert(e);
    };
    let mut sender = None;
    let mut date_cache: (i64, String) = (0, String::new());
    let mut request = Vec::with_capacity(2048);
    let mut buf = Vec::with_capacity(8192);
    let mut n = index;
    while Instant::now() < timing.end {
        let mut conn = match sender.take() {
            Some(s) => s,
            None => match connect(addr).await {
                Ok(s) => s,
                Err(e) => {
                    fail(&mut out, e, true);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let (body, hash) = &work.bodies[n % work.bodies.len()];
        n += 1;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        if date_cache.0 != now {
            date_cache = (now, amz_date(now));
        }
        let auth = signer.authorization(&date_cache.1, &work.target, hash);
        request.clear();
        let _ = write!(
            request,
            "POST / HTTP/1.1\r\nhost: {}\r\ncontent-type: {CONTENT_TYPE}\r\nx-amz-date: {}\r\n\
             x-amz-target: {}\r\nauthorization: {auth}\r\ncontent-length: {}\r\n\r\n",
            signer.host(),
            date_cache.1,
            work.target,
            body.len()
        );
        request.extend_from_slice(body);
        let t0 = Instant::now();
        let result = exchange(&mut conn, &request, &mut buf).await;
        let done = Instant::now();
        let in_window = done >= timing.measure_from && done <= timing.end;
        match result {
            Ok((status, _, close)) if (200..300).contains(&status) => {
                if !close {
                    sender = Some(conn);
                }
                if in_window {
                    out.ops += 1;
                    out.latencies_ns.push((done - t0).as_nanos() as u64);
                }
                progress.fetch_add(1, Ordering::Relaxed);
            }
            Ok((status, body, close)) => {
                if !close {
                    sender = Some(conn);
                }
                fail(
                    &mut out,
                    format!("HTTP {status}: {}", String::from_utf8_lossy(&body)),
                    done <= timing.end,
                );
            }
            Err(e) => fail(&mut out, e, true),
        }
    }
    out
}
