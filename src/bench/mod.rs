//! `p11kms bench`: how fast p11kms is, measured against the token's own ceiling in the same run.
//!
//! One run, on a fresh embedded SoftHSM token in a temporary state folder:
//! 1. the **ceiling**: raw `cryptoki` loops doing exactly the token calls one request needs
//!    ([`crate::hsm::CeilingOp`]), on as many sessions/threads as the server's pool;
//! 2. the **library**: the same operations through [`Kms`], in this process;
//! 3. **end to end**: `p11kms serve` as a separate process on loopback, driven by the load
//!    generator in [`load`] with SigV4-signed requests over keep-alive connections.
//!
//! Every figure is set against the ceiling of the same run and written to `BENCHMARKS.md`
//! (between markers, so hand-written notes around the table survive a re-run).
//! `--scale N` runs the scale measurements instead (N keys and N aliases; see [`scale`]).

mod load;
mod procfs;
mod scale;
mod sign;

use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use indicatif::{ProgressBar, ProgressStyle};
use zeroize::Zeroizing;

use crate::config::Config;
use crate::error::{KmsError, Result};
use crate::hsm::CeilingOp;
use crate::kms::blob::HEADER_LEN;
use crate::kms::types::{
    Bytes as KmsBytes, ContextMap, DecryptRequest, EncryptRequest, GenerateDataKeyRequest,
    SecretBytes,
};
use crate::kms::{EncryptionContext, Kms};

pub use load::CellResult;

/// Options of `p11kms bench`.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Seconds measured per cell (each cell first warms up for a quarter of that, at most 1 s).
    #[arg(long, default_value_t = 4.0)]
    pub seconds: f64,
    /// Concurrency levels of the end-to-end runs (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "1,4,16,64")]
    pub concurrency: Vec<usize>,
    /// Markdown file to write the results into (between `p11kms-bench` markers).
    #[arg(long, default_value = "BENCHMARKS.md")]
    pub out: PathBuf,
    /// Print the results only; do not touch the output file.
    #[arg(long)]
    pub no_write: bool,
    /// Scale run instead: make the token hold N keys and N aliases, then measure start-up,
    /// DescribeKey, data keys and ListKeys pages against the same figures with one key.
    #[arg(long, value_name = "N")]
    pub scale: Option<usize>,
    /// State folder of the token to use (kept afterwards). Default: a fresh temporary one.
    /// With --scale, keys already in it count towards N, so a second run skips creation.
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// A note on the machine's condition to print with the results (e.g. "idle").
    #[arg(long)]
    pub note: Option<String>,
    /// Run this `p11kms` executable as the server instead of this one (to compare builds
    /// under the same harness, ceiling and token).
    #[arg(long, value_name = "PATH")]
    pub server_bin: Option<PathBuf>,
    /// Only the end-to-end and floor rows (no ceiling, no library): for quick A/B runs of
    /// server builds with --server-bin. Ratios to the ceiling are then not shown.
    #[arg(long)]
    pub http_only: bool,
}

/// Runs the benchmark (or the scale run) and writes the report.
pub fn run(args: BenchArgs) -> Result<()> {
    if args.seconds <= 0.0 || !args.seconds.is_finite() {
        return Err(KmsError::Config("--seconds must be positive".into()));
    }
    let scratch = Scratch::new(args.state_dir.as_deref())?;
    let state = scratch.path.join("state");
    crate::setup::init_embedded(&state)?;
    let config = Config::embedded(&state)?;
    let report = if let Some(n) = args.scale {
        scale::run(&args, &config, &state, n)?
    } else {
        run_main(&args, &config, &state)?
    };
    println!("{report}");
    if !args.no_write {
        let marker = if args.scale.is_some() {
            "p11kms-bench-scale"
        } else {
            "p11kms-bench"
        };
        write_section(&args.out, marker, &report)?;
        eprintln!("p11kms bench: results written to {}", args.out.display());
    }
    Ok(())
}

// ----- the operations measured -------------------------------------------------------------

/// The operations of the main table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    DataKeyWithoutPlaintext,
    DataKey,
    Decrypt,
    Encrypt1k,
}

impl Op {
    const ALL: [Op; 4] = [
        Op::DataKeyWithoutPlaintext,
        Op::DataKey,
        Op::Decrypt,
        Op::Encrypt1k,
    ];

    fn name(self) -> &'static str {
        match self {
            Op::DataKeyWithoutPlaintext => "GenerateDataKeyWithoutPlaintext",
            Op::DataKey => "GenerateDataKey",
            Op::Decrypt => "Decrypt",
            Op::Encrypt1k => "Encrypt",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Op::DataKeyWithoutPlaintext => "GenerateDataKeyWithoutPlaintext (32 B, context)",
            Op::DataKey => "GenerateDataKey (32 B, context)",
            Op::Decrypt => "Decrypt (data key blob, context)",
            Op::Encrypt1k => "Encrypt (1 KiB, context)",
        }
    }

    /// Which ceiling this operation is compared with.
    fn ceiling(self) -> Ceiling {
        match self {
            Op::DataKeyWithoutPlaintext | Op::DataKey => Ceiling::DataKey,
            Op::Decrypt => Ceiling::Decrypt,
            Op::Encrypt1k => Ceiling::Encrypt,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ceiling {
    DataKey,
    Encrypt,
    Decrypt,
}

impl Ceiling {
    const ALL: [Ceiling; 3] = [Ceiling::DataKey, Ceiling::Decrypt, Ceiling::Encrypt];

    fn label(self) -> &'static str {
        match self {
            Ceiling::DataKey => "RNG(44) + GCM seal 32 B",
            Ceiling::Decrypt => "GCM open 32 B",
            Ceiling::Encrypt => "RNG(12) + GCM seal 1 KiB",
        }
    }
}

const PLAINTEXT_1K: usize = 1024;
const DATA_KEY: usize = 32;

fn context_map() -> ContextMap {
    ContextMap::from([
        ("purpose".to_owned(), "bench".to_owned()),
        ("tenant".to_owned(), "t-0001".to_owned()),
    ])
}

/// The AAD the real requests carry: a blob header and the canonical context.
fn aad() -> Result<Vec<u8>> {
    let mut aad = vec![0u8; HEADER_LEN];
    EncryptionContext::new(context_map())?.write_canonical(&mut aad);
    Ok(aad)
}

fn ceiling_op(c: Ceiling) -> Result<CeilingOp> {
    let aad = aad()?;
    Ok(match c {
        Ceiling::DataKey => CeilingOp::DataKey {
            key_len: DATA_KEY,
            aad,
        },
        Ceiling::Encrypt => CeilingOp::Encrypt {
            plaintext_len: PLAINTEXT_1K,
            aad,
        },
        Ceiling::Decrypt => CeilingOp::Decrypt {
            plaintext_len: DATA_KEY,
            aad,
        },
    })
}

/// One library call of `op`.
fn library_call(kms: &Kms, op: Op, key: &str, blobs: &[Vec<u8>], n: usize) -> Result<()> {
    let gdk = || GenerateDataKeyRequest {
        key_id: Some(key.to_owned()),
        encryption_context: Some(context_map()),
        key_spec: Some("AES_256".into()),
        ..Default::default()
    };
    match op {
        Op::DataKeyWithoutPlaintext => kms.generate_data_key_without_plaintext(gdk()).map(drop),
        Op::DataKey => kms.generate_data_key(gdk()).map(drop),
        Op::Decrypt => kms
            .decrypt(DecryptRequest {
                ciphertext_blob: Some(KmsBytes(blobs[n % blobs.len()].clone())),
                encryption_context: Some(context_map()),
                ..Default::default()
            })
            .map(drop),
        Op::Encrypt1k => kms
            .encrypt(EncryptRequest {
                key_id: Some(key.to_owned()),
                plaintext: Some(SecretBytes(Zeroizing::new(vec![0x42; PLAINTEXT_1K]))),
                encryption_context: Some(context_map()),
                ..Default::default()
            })
            .map(drop),
    }
}

/// The JSON bodies of `op` on the wire.
fn wire_bodies(op: Op, key: &str, blobs: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let ctx = context_map();
    let one = |v: serde_json::Value| vec![v.to_string().into_bytes()];
    match op {
        Op::DataKeyWithoutPlaintext | Op::DataKey => one(serde_json::json!({
            "KeyId": key, "KeySpec": "AES_256", "EncryptionContext": ctx,
        })),
        Op::Encrypt1k => one(serde_json::json!({
            "KeyId": key,
            "Plaintext": B64.encode(vec![0x42u8; PLAINTEXT_1K]),
            "EncryptionContext": ctx,
        })),
        Op::Decrypt => blobs
            .iter()
            .map(|b| {
                serde_json::json!({ "CiphertextBlob": B64.encode(b), "EncryptionContext": ctx })
                    .to_string()
                    .into_bytes()
            })
            .collect(),
    }
}

// ----- measurement plumbing ----------------------------------------------------------------

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Default)]
struct Lat {
    p50: f64,
    p99: f64,
    max: f64,
}

impl Lat {
    fn of(mut ns: Vec<u64>) -> Lat {
        if ns.is_empty() {
            return Lat::default();
        }
        ns.sort_unstable();
        let at = |q: f64| ns[((ns.len() as f64 * q).ceil() as usize).clamp(1, ns.len()) - 1];
        let ms = |v: u64| v as f64 / 1e6;
        Lat {
            p50: ms(at(0.50)),
            p99: ms(at(0.99)),
            max: ms(ns[ns.len() - 1]),
        }
    }
}

/// One line of the table.
#[derive(Debug, Clone)]
struct Row {
    layer: &'static str,
    what: String,
    conc: usize,
    ops: u64,
    secs: f64,
    lat: Lat,
    /// CPU time per operation of the process doing the work (µs).
    cpu_us: Option<f64>,
    /// CPU time per operation of the load generator (µs), end to end only.
    client_cpu_us: Option<f64>,
    errors: u64,
    ceiling: Option<Ceiling>,
}

impl Row {
    fn rate(&self) -> f64 {
        if self.secs > 0.0 {
            self.ops as f64 / self.secs
        } else {
            0.0
        }
    }
}

fn per_op_us(cpu: Option<Duration>, ops: u64) -> Option<f64> {
    cpu.filter(|_| ops > 0)
        .map(|c| c.as_secs_f64() * 1e6 / ops as f64)
}

/// The live display: one bar over the cells, with the current cell's rate.
struct Progress {
    bar: ProgressBar,
    count: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    ticker: Option<std::thread::JoinHandle<()>>,
}

impl Progress {
    fn new(cells: u64) -> Progress {
        let bar = ProgressBar::new(cells);
        let count = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let ticker = {
            let (bar, count, stop) = (bar.clone(), Arc::clone(&count), Arc::clone(&stop));
            std::thread::spawn(move || {
                let mut last = (Instant::now(), 0u64);
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(250));
                    let (now, n) = (Instant::now(), count.load(Ordering::Relaxed));
                    let rate = n.saturating_sub(last.1) as f64 / (now - last.0).as_secs_f64();
                    last = (now, n);
                    bar.set_prefix(format!("{rate:>8.0} ops/s"));
                    bar.tick();
                }
            })
        };
        bar.set_style(
            ProgressStyle::with_template("{elapsed_precise} [{bar:24}] {pos}/{len} {prefix} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        Progress {
            bar,
            count,
            stop,
            ticker: Some(ticker),
        }
    }

    fn start(&self, what: &str) {
        self.bar.set_message(what.to_owned());
    }

    fn done(&self, row: &Row) {
        let line = format!(
            "{:<8} {:<34} c={:<3} {:>9.0} ops/s  p50 {:.3} ms  p99 {:.3} ms  errors {}",
            row.layer,
            row.what,
            row.conc,
            row.rate(),
            row.lat.p50,
            row.lat.p99,
            row.errors
        );
        if self.bar.is_hidden() {
            eprintln!("{line}");
        } else {
            self.bar.println(line);
        }
        self.bar.inc(1);
    }

    fn note(&self, line: &str) {
        if self.bar.is_hidden() {
            eprintln!("{line}");
        } else {
            self.bar.println(line);
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.ticker.take() {
            let _ = t.join();
        }
        self.bar.finish_and_clear();
    }
}

/// Warm-up before each measuring window.
fn warmup(seconds: f64) -> Duration {
    Duration::from_secs_f64((seconds / 4.0).min(1.0))
}

/// Runs `f(thread, n)` on `threads` threads for warm-up + window; counts what completes in
/// the window, with this process's CPU time over the window.
fn threaded_cell(
    threads: usize,
    warm: Duration,
    measure: Duration,
    progress: &AtomicU64,
    f: impl Fn(usize) -> Result<()> + Sync,
) -> CellResult {
    let start = Instant::now();
    let (from, end) = (start + warm, start + warm + measure);
    std::thread::scope(|scope| {
        let f = &f;
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                scope.spawn(move || {
                    let mut out = CellResult::default();
                    let mut n = t;
                    while Instant::now() < end {
                        let t0 = Instant::now();
                        let r = f(n);
                        let done = Instant::now();
                        n += threads;
                        match r {
                            Ok(()) => {
                                progress.fetch_add(1, Ordering::Relaxed);
                                if done >= from && done <= end {
                                    out.ops += 1;
                                    out.latencies_ns.push((done - t0).as_nanos() as u64);
                                }
                            }
                            Err(e) => {
                                out.errors += 1;
                                out.first_error.get_or_insert_with(|| e.to_string());
                            }
                        }
                    }
                    out
                })
            })
            .collect();
        std::thread::sleep(from.saturating_duration_since(Instant::now()));
        let c0 = procfs::cpu_time(None);
        let t0 = Instant::now();
        std::thread::sleep(end.saturating_duration_since(Instant::now()));
        let c1 = procfs::cpu_time(None);
        let mut total = CellResult {
            window: t0.elapsed(),
            server_cpu: c0.zip(c1).map(|(a, b)| b.saturating_sub(a)),
            ..Default::default()
        };
        for w in workers {
            match w.join() {
                Ok(r) => {
                    total.ops += r.ops;
                    total.latencies_ns.extend(r.latencies_ns);
                    total.errors += r.errors;
                    if total.first_error.is_none() {
                        total.first_error = r.first_error;
                    }
                }
                Err(_) => total.errors += 1,
            }
        }
        total
    })
}

// ----- the server under test ---------------------------------------------------------------

/// `p11kms serve` as a child process over the bench's state folder.
struct Server {
    child: Child,
    addr: SocketAddr,
    /// From spawn to `listening on`.
    startup: Duration,
}

impl Server {
    /// Starts `p11kms serve` (with `extra` arguments, e.g. `--http-floor`) on a free port.
    fn start(state: &Path, log: &Path, bin: Option<&Path>, extra: &[&str]) -> Result<Server> {
        let exe = match bin {
            Some(b) => b.to_path_buf(),
            None => std::env::current_exe()
                .map_err(|e| KmsError::Io(format!("cannot find this executable: {e}")))?,
        };
        let log = std::fs::File::create(log)
            .map_err(|e| KmsError::Io(format!("cannot create the server log: {e}")))?;
        let t0 = Instant::now();
        let mut child = Command::new(exe)
            .arg("serve")
            .args(extra)
            .env("P11KMS_STATE_DIR", state)
            .env("P11KMS_LISTEN", "127.0.0.1:0")
            .env_remove("P11KMS_CONFIG")
            .env_remove("SOFTHSM2_CONF")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .map_err(|e| KmsError::Io(format!("cannot start p11kms serve: {e}")))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| KmsError::Internal("no server stdout".into()))?;
        let (tx, rx) = std::sync::mpsc::channel();
        // Reads the banner, then keeps draining stdout so the server never blocks on it.
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = line.strip_prefix("listening on ") {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(addr.trim().to_owned());
                    }
                }
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(600)) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(KmsError::Internal(
                    "p11kms serve did not print `listening on`; see its log".into(),
                ));
            }
        };
        let startup = t0.elapsed();
        let addr = addr
            .parse()
            .map_err(|_| KmsError::Internal(format!("bad listening address {addr}")))?;
        Ok(Server {
            child,
            addr,
            startup,
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The embedded token's dev credential, as `serve` prints it.
fn credentials(state: &Path) -> Result<(String, String)> {
    let read = |name: &str| {
        std::fs::read_to_string(state.join(name))
            .map(|s| s.trim().to_owned())
            .map_err(|e| KmsError::Io(format!("cannot read {name}: {e}")))
    };
    Ok((read("dev-access-key-id")?, read("dev-secret-key")?))
}

fn signer(config: &Config, state: &Path, addr: SocketAddr) -> Result<sign::Signer> {
    let (id, secret) = credentials(state)?;
    Ok(sign::Signer::new(
        &id,
        &secret,
        &config.region,
        &addr.to_string(),
    ))
}

/// A temporary (or given) folder for the token; a temporary one is removed at the end.
struct Scratch {
    path: PathBuf,
    remove: bool,
}

impl Scratch {
    fn new(given: Option<&Path>) -> Result<Scratch> {
        if let Some(p) = given {
            std::fs::create_dir_all(p)
                .map_err(|e| KmsError::Io(format!("cannot create {}: {e}", p.display())))?;
            let path = std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
            return Ok(Scratch {
                path,
                remove: false,
            });
        }
        let path = std::env::temp_dir().join(format!(
            "p11kms-bench-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&path)
            .map_err(|e| KmsError::Io(format!("cannot create {}: {e}", path.display())))?;
        Ok(Scratch { path, remove: true })
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if self.remove {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

// ----- the main run ------------------------------------------------------------------------

fn run_main(args: &BenchArgs, config: &Config, state: &Path) -> Result<String> {
    let load_before = procfs::loadavg();
    let busy_before = procfs::machine_busy(Duration::from_secs(1));
    let kms = Kms::open(config)?;
    let sessions = kms.token().pool_size();
    let key = kms.create_key(Default::default())?.key_metadata.key_id;
    let measure = Duration::from_secs_f64(args.seconds);
    let warm = warmup(args.seconds);
    let ceiling_threads: Vec<usize> = if sessions > 1 {
        vec![1, sessions]
    } else {
        vec![1]
    };
    let lib_conc: Vec<usize> = if sessions > 1 {
        vec![1, sessions]
    } else {
        vec![1]
    };
    let cells = if args.http_only {
        0
    } else {
        Ceiling::ALL.len() * ceiling_threads.len() + Op::ALL.len() * lib_conc.len()
    } + (Op::ALL.len() + 1) * args.concurrency.len();
    let progress = Progress::new(cells as u64);
    let mut rows = Vec::new();

    // 1. The ceiling.
    for c in Ceiling::ALL.into_iter().filter(|_| !args.http_only) {
        let op = ceiling_op(c)?;
        for &t in &ceiling_threads {
            progress.start(&format!("ceiling {} x{t}", c.label()));
            let _ = kms.token().bench_ceiling(&op, t, warm, &progress.count)?;
            let c0 = procfs::cpu_time(None);
            let r = kms
                .token()
                .bench_ceiling(&op, t, measure, &progress.count)?;
            let c1 = procfs::cpu_time(None);
            let row = Row {
                layer: "ceiling",
                what: c.label().to_owned(),
                conc: t,
                ops: r.ops,
                secs: r.elapsed.as_secs_f64(),
                lat: Lat::of(r.latencies_ns),
                cpu_us: per_op_us(c0.zip(c1).map(|(a, b)| b.saturating_sub(a)), r.ops),
                client_cpu_us: None,
                errors: 0,
                ceiling: Some(c),
            };
            progress.done(&row);
            rows.push(row);
        }
    }

    // Blobs to decrypt: data keys sealed through the library, with the bench context.
    let blobs: Vec<Vec<u8>> = (0..64)
        .map(|_| {
            kms.generate_data_key_without_plaintext(GenerateDataKeyRequest {
                key_id: Some(key.clone()),
                encryption_context: Some(context_map()),
                key_spec: Some("AES_256".into()),
                ..Default::default()
            })
            .map(|r| r.ciphertext_blob.0)
        })
        .collect::<Result<_>>()?;

    // 2. The library.
    for op in Op::ALL.into_iter().filter(|_| !args.http_only) {
        for &t in &lib_conc {
            progress.start(&format!("library {} c={t}", op.name()));
            let r = threaded_cell(t, warm, measure, &progress.count, |n| {
                library_call(&kms, op, &key, &blobs, n)
            });
            let row = cell_row("library", op, t, r);
            progress.done(&row);
            rows.push(row);
        }
    }

    // 3. End to end.
    progress.start("starting p11kms serve");
    let log = state.join("bench-server.log");
    let server = Server::start(state, &log, args.server_bin.as_deref(), &[])?;
    progress.note(&format!(
        "p11kms serve (pid {}) listening on {} after {:.0} ms",
        server.pid(),
        server.addr,
        server.startup.as_secs_f64() * 1e3
    ));
    let signer = signer(config, state, server.addr)?;
    let mut first_errors = Vec::new();
    for op in Op::ALL {
        let work = Arc::new(load::Workload::new(
            op.name(),
            wire_bodies(op, &key, &blobs),
        ));
        for &c in &args.concurrency {
            progress.start(&format!("http {} c={c}", op.name()));
            let target = load::Target {
                addr: server.addr,
                signer: &signer,
                server_pid: server.pid(),
                progress: &progress.count,
            };
            let r = load::run_cell(&target, &work, c, warm, measure);
            if let Some(e) = &r.first_error {
                first_errors.push(format!("{} c={c}: {e}", op.name()));
            }
            let row = cell_row("http", op, c, r);
            progress.done(&row);
            rows.push(row);
        }
    }
    let rss_peak = procfs::vm_kib(server.pid(), "VmHWM");
    let rss_now = procfs::vm_kib(server.pid(), "VmRSS");
    drop(server);

    // 4. The HTTP floor: the same load against a server that answers without doing anything.
    progress.start("starting the HTTP floor server");
    let floor_log = state.join("bench-floor.log");
    // Always this build's floor, also when --server-bin measures another server.
    let floor = Server::start(state, &floor_log, None, &["--http-floor"])?;
    let floor_work = Arc::new(load::Workload::new(
        Op::DataKeyWithoutPlaintext.name(),
        wire_bodies(Op::DataKeyWithoutPlaintext, &key, &blobs),
    ));
    for &c in &args.concurrency {
        progress.start(&format!("http floor c={c}"));
        let target = load::Target {
            addr: floor.addr,
            signer: &signer,
            server_pid: floor.pid(),
            progress: &progress.count,
        };
        let r = load::run_cell(&target, &floor_work, c, warm, measure);
        let mut row = cell_row("floor", Op::DataKeyWithoutPlaintext, c, r);
        row.what = "fixed answer, no SigV4, no token".into();
        row.ceiling = None;
        progress.done(&row);
        rows.push(row);
    }
    drop(floor);
    drop(progress);
    let load_after = procfs::loadavg();

    let info = RunInfo::collect(config, &kms, sessions, args)?;
    Ok(render_main(
        &info,
        &rows,
        rss_peak,
        rss_now,
        (&load_before, busy_before, &load_after),
        &first_errors,
    ))
}

fn cell_row(layer: &'static str, op: Op, conc: usize, r: CellResult) -> Row {
    Row {
        layer,
        what: op.label().to_owned(),
        conc,
        ops: r.ops,
        secs: r.window.as_secs_f64(),
        cpu_us: per_op_us(r.server_cpu, r.ops),
        client_cpu_us: per_op_us(r.client_cpu, r.ops),
        lat: Lat::of(r.latencies_ns),
        errors: r.errors,
        ceiling: Some(op.ceiling()),
    }
}

// ----- the report --------------------------------------------------------------------------

/// Where and with what the run happened.
struct RunInfo {
    date: String,
    cpus: usize,
    cpu_model: String,
    mem_gib: Option<f64>,
    rustc: String,
    softhsm: String,
    module: String,
    git: String,
    sessions: usize,
    command: String,
    note: Option<String>,
}

fn command_output(cmd: &str, args: &[&str], dir: Option<&Path>) -> Option<String> {
    let mut c = Command::new(cmd);
    c.args(args).stderr(Stdio::null());
    if let Some(d) = dir {
        c.current_dir(d);
    }
    let out = c.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

impl RunInfo {
    fn collect(config: &Config, kms: &Kms, sessions: usize, args: &BenchArgs) -> Result<RunInfo> {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
        let git = match command_output("git", &["rev-parse", "--short=12", "HEAD"], Some(repo)) {
            Some(rev) => {
                let dirty = command_output("git", &["status", "--porcelain"], Some(repo))
                    .is_some_and(|s| !s.is_empty());
                if dirty {
                    format!("{rev} + uncommitted changes")
                } else {
                    rev
                }
            }
            None => "unknown".into(),
        };
        let d = kms.token().description();
        let mut command = String::from("cargo build --release && target/release/p11kms bench");
        if (args.seconds - 4.0).abs() > f64::EPSILON {
            let _ = write!(command, " --seconds {}", args.seconds);
        }
        if args.concurrency != [1, 4, 16, 64] {
            let c: Vec<String> = args.concurrency.iter().map(|c| c.to_string()).collect();
            let _ = write!(command, " --concurrency {}", c.join(","));
        }
        if let Some(n) = args.scale {
            let _ = write!(command, " --scale {n}");
        }
        if let Some(b) = &args.server_bin {
            let _ = write!(command, " --server-bin {}", b.display());
        }
        Ok(RunInfo {
            date: time::OffsetDateTime::now_utc()
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpu_model: procfs::cpu_model(),
            mem_gib: procfs::mem_total_gib(),
            rustc: command_output("rustc", &["--version"], None)
                .unwrap_or_else(|| "unknown".into()),
            softhsm: command_output("dpkg-query", &["-W", "-f=${Version}", "softhsm2"], None)
                .map(|v| format!("softhsm2 {v} (Debian package)"))
                .unwrap_or_else(|| "softhsm2 (package version unknown)".into()),
            module: format!(
                "{} {} ({}), cryptoki {}",
                d.library,
                d.library_version,
                config.token.module.display(),
                d.cryptoki_version
            ),
            git,
            sessions,
            command,
            note: args.note.clone(),
        })
    }

    fn header(&self, out: &mut String) {
        let _ = writeln!(out, "- Date: {}", self.date);
        let _ = writeln!(
            out,
            "- Machine: {} CPUs ({}), {} GiB memory",
            self.cpus,
            self.cpu_model,
            self.mem_gib.map_or("?".into(), |m| format!("{m:.1}"))
        );
        let _ = writeln!(
            out,
            "- Versions: p11kms {}; {}; {}; module {}",
            self.git, self.rustc, self.softhsm, self.module
        );
        let _ = writeln!(
            out,
            "- Token sessions (server pool, ceiling threads): {}",
            self.sessions
        );
        let _ = writeln!(out, "- Reproduce: `{}`", self.command);
        if let Some(n) = &self.note {
            let _ = writeln!(out, "- Note: {n}");
        }
    }
}

fn fmt_opt(v: Option<f64>, prec: usize) -> String {
    v.map_or("–".into(), |v| format!("{v:.prec$}"))
}

fn render_main(
    info: &RunInfo,
    rows: &[Row],
    rss_peak: Option<u64>,
    rss_now: Option<u64>,
    load: (&str, Option<f64>, &str),
    first_errors: &[String],
) -> String {
    // The reference: each ceiling at the pool's number of threads.
    let ceiling = |c: Ceiling| {
        rows.iter()
            .filter(|r| r.layer == "ceiling" && r.ceiling == Some(c))
            .max_by_key(|r| r.conc)
    };
    let mut out = String::new();
    let _ = writeln!(out, "### Run\n");
    info.header(&mut out);
    let _ = writeln!(
        out,
        "- Machine load: load average {} before (CPUs {} busy over 1 s before the run), {} after. \
         The load generator runs on the same machine, on one thread.",
        load.0,
        load.1.map_or("?".into(), |b| format!("{:.0}%", b * 100.0)),
        load.2
    );
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "| layer | operation | conc. | ops/s | × ceiling | p50 ms | p99 ms | max ms | CPU µs/op | × ceiling CPU | client CPU µs/op | errors |"
    );
    let _ = writeln!(
        out,
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for r in rows {
        let reference = r.ceiling.and_then(ceiling);
        let ratio = reference
            .filter(|c| c.rate() > 0.0)
            .map(|c| r.rate() / c.rate());
        let cpu_ratio = reference
            .and_then(|c| c.cpu_us)
            .zip(r.cpu_us)
            .filter(|(c, _)| *c > 0.0)
            .map(|(c, v)| v / c);
        let _ = writeln!(
            out,
            "| {} | {} | {} | {:.0} | {} | {:.3} | {:.3} | {:.3} | {} | {} | {} | {} |",
            r.layer,
            r.what,
            r.conc,
            r.rate(),
            fmt_opt(ratio, 2),
            r.lat.p50,
            r.lat.p99,
            r.lat.max,
            fmt_opt(r.cpu_us, 1),
            fmt_opt(cpu_ratio, 1),
            fmt_opt(r.client_cpu_us, 1),
            r.errors
        );
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "Ceiling rows: conc. = threads, each holding one session; CPU is this process's. Library \
         rows: conc. = threads calling `Kms` in the harness; CPU is the harness's. http rows: conc. \
         = keep-alive connections; CPU is the server process's (utime+stime from /proc), client CPU \
         the load generator's. × ceiling compares with the ceiling row of {} threads.",
        info.sessions
    );
    let mib = |k: Option<u64>| k.map_or("?".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0));
    let _ = writeln!(
        out,
        "\nServer memory: peak RSS (VmHWM) {}, RSS at the end {}.",
        mib(rss_peak),
        mib(rss_now)
    );

    // End to end against the floor: the HTTP floor of the same concurrency and the token
    // ceiling together bound what a request can cost here (both run on the same cores), so
    // the bound is their harmonic combination: 1 / (1/floor + 1/ceiling).
    let http = |op: Op, c: usize| {
        rows.iter()
            .find(|r| r.layer == "http" && r.what == op.label() && r.conc == c)
    };
    let floor = |c: usize| rows.iter().find(|r| r.layer == "floor" && r.conc == c);
    if rows.iter().any(|r| r.layer == "floor") {
        let _ = writeln!(
            out,
            "\n#### End to end against the HTTP floor and the token ceiling\n"
        );
        let _ = writeln!(
            out,
            "| operation | conc. | ops/s | floor ops/s | × floor | ceiling ops/s | floor ⊕ ceiling | × (floor ⊕ ceiling) |"
        );
        let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|");
        for r in rows.iter().filter(|r| r.layer == "http") {
            let (Some(f), Some(c)) = (floor(r.conc), r.ceiling.and_then(ceiling)) else {
                continue;
            };
            let bound = 1.0 / (1.0 / f.rate().max(1e-9) + 1.0 / c.rate().max(1e-9));
            let _ = writeln!(
                out,
                "| {} | {} | {:.0} | {:.0} | {:.2} | {:.0} | {:.0} | {:.2} |",
                r.what,
                r.conc,
                r.rate(),
                f.rate(),
                r.rate() / f.rate().max(1e-9),
                c.rate(),
                bound,
                r.rate() / bound
            );
        }
        let _ = writeln!(
            out,
            "\nfloor ⊕ ceiling = 1 / (1/floor + 1/ceiling): a request costs at least the floor's \
             HTTP work plus the ceiling's token work, on the same cores."
        );
    }
    let _ = writeln!(out, "\n#### Targets\n");
    for op in [Op::DataKeyWithoutPlaintext, Op::Decrypt] {
        if let (Some(r), Some(c)) = (http(op, 16), ceiling(op.ceiling())) {
            let ratio = r.rate() / c.rate().max(1e-9);
            let _ = writeln!(
                out,
                "- {} end to end at c=16: {:.0} ops/s = {:.2} × ceiling ({:.0} ops/s); target ≥ 0.50: **{}**",
                op.name(),
                r.rate(),
                ratio,
                c.rate(),
                if ratio >= 0.5 { "met" } else { "missed" }
            );
        }
    }
    let p99: Vec<(Op, f64)> = Op::ALL
        .iter()
        .filter_map(|&op| http(op, 16).map(|r| (op, r.lat.p99)))
        .collect();
    if !p99.is_empty() {
        let worst = p99.iter().fold(0.0f64, |m, (_, v)| m.max(*v));
        let list: Vec<String> = p99
            .iter()
            .map(|(op, v)| format!("{} {v:.2} ms", op.name()))
            .collect();
        let _ = writeln!(
            out,
            "- p99 at c=16 < 5 ms: {}: **{}**",
            list.join(", "),
            if worst < 5.0 { "met" } else { "missed" }
        );
    }
    for op in Op::ALL {
        if let (Some(r16), Some(r64)) = (http(op, 16), http(op, 64)) {
            let ratio = r64.rate() / r16.rate().max(1e-9);
            let _ = writeln!(
                out,
                "- {} at c=64 ≥ 0.9 × c=16: {:.0} vs {:.0} ops/s = {:.2}: **{}**",
                op.name(),
                r64.rate(),
                r16.rate(),
                ratio,
                if ratio >= 0.9 { "met" } else { "missed" }
            );
        }
    }
    let e64: u64 = rows
        .iter()
        .filter(|r| r.layer == "http" && r.conc == 64)
        .map(|r| r.errors)
        .sum();
    if rows.iter().any(|r| r.layer == "http" && r.conc == 64) {
        let _ = writeln!(
            out,
            "- no errors at c=64: {e64} errors: **{}**",
            if e64 == 0 { "met" } else { "missed" }
        );
    }
    if let Some(k) = rss_peak {
        let _ = writeln!(
            out,
            "- server peak RSS < 64 MiB: {}: **{}**",
            mib(Some(k)),
            if k < 64 * 1024 { "met" } else { "missed" }
        );
    }
    for e in first_errors {
        let _ = writeln!(out, "- first error seen: {e}");
    }
    out
}

/// Replaces the text between `<!-- NAME:begin -->` and `<!-- NAME:end -->` in `path` (or
/// appends the section), keeping everything else in the file.
fn write_section(path: &Path, name: &str, body: &str) -> Result<()> {
    let begin = format!("<!-- {name}:begin -->");
    let end = format!("<!-- {name}:end -->");
    let old = std::fs::read_to_string(path).unwrap_or_default();
    let section = format!("{begin}\n{body}{end}");
    let new = match (old.find(&begin), old.find(&end)) {
        (Some(b), Some(e)) if e > b => {
            format!("{}{section}{}", &old[..b], &old[e + end.len()..])
        }
        _ if old.is_empty() => format!("# p11kms benchmarks\n\n{section}\n"),
        _ => format!("{}\n{section}\n", old.trim_end()),
    };
    std::fs::write(path, new)
        .map_err(|e| KmsError::Io(format!("cannot write {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let l = Lat::of((1..=100).map(|v| v * 1_000_000).collect());
        assert_eq!(l.p50, 50.0);
        assert_eq!(l.p99, 99.0);
        assert_eq!(l.max, 100.0);
        assert_eq!(Lat::of(vec![]).p50, 0.0);
    }

    #[test]
    fn sections_are_replaced_in_place() {
        let dir = std::env::temp_dir().join(format!("p11kms-bench-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("B.md");
        let _ = std::fs::remove_file(&p);
        write_section(&p, "s", "one\n").unwrap();
        let first = std::fs::read_to_string(&p).unwrap();
        assert!(first.contains("one"));
        std::fs::write(&p, format!("intro\n{first}\nnotes after\n")).unwrap();
        write_section(&p, "s", "two\n").unwrap();
        let second = std::fs::read_to_string(&p).unwrap();
        assert!(second.contains("intro") && second.contains("notes after"));
        assert!(second.contains("two") && !second.contains("one\n"));
        write_section(&p, "t", "three\n").unwrap();
        assert!(std::fs::read_to_string(&p).unwrap().contains("three"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn aad_has_the_real_length() {
        let a = aad().unwrap();
        assert!(a.len() > HEADER_LEN);
    }
}
