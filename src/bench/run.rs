//! The main run, in its phases: the token's ceiling, the library in this process, `p11kms serve`
//! end to end, and the HTTP floor.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::load::{self, CellResult};
use super::measure::{per_op_us, threaded_cell, warmup, Lat, Row};
use super::ops::{ceiling_op, library_call, wire_bodies, Ceiling, Fixtures, Op};
use super::progress::Progress;
use super::report::{render_main, RunInfo};
use super::server::{signer, Server};
use super::{procfs, BenchArgs};
use crate::config::Config;
use crate::error::Result;

pub(super) fn run_main(args: &BenchArgs, config: &Config, state: &Path) -> Result<String> {
    let load_before = procfs::loadavg();
    let busy_before = procfs::machine_busy(Duration::from_secs(1));
    let ops = Op::select(&args.ops)?;
    let ceilings = Ceiling::of(&ops);
    let kms = crate::app::open(config)?;
    let sessions = kms.token().pool_size();
    // The keys, and the inputs of Decrypt and Verify, made through the library.
    let fx = Fixtures::create(&kms, &ops)?;
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
        ceilings.len() * ceiling_threads.len() + ops.len() * lib_conc.len()
    } + (ops.len() + 1) * args.concurrency.len();
    let progress = Progress::new(cells as u64);
    let mut rows = Vec::new();

    // 1. The ceiling.
    for &c in ceilings.iter().filter(|_| !args.http_only) {
        let op = ceiling_op(c, &kms, &fx)?;
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

    // 2. The library.
    for &op in ops.iter().filter(|_| !args.http_only) {
        for &t in &lib_conc {
            progress.start(&format!("library {} c={t}", op.label()));
            let r = threaded_cell(t, warm, measure, &progress.count, |n| {
                library_call(&kms, op, &fx, n)
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
    for &op in &ops {
        let work = Arc::new(load::Workload::new(op.name(), wire_bodies(op, &fx)));
        for &c in &args.concurrency {
            progress.start(&format!("http {} c={c}", op.label()));
            let r = load::run_cell(
                &server.target(&signer, &progress.count),
                &work,
                c,
                warm,
                measure,
            );
            if let Some(e) = &r.first_error {
                first_errors.push(format!("{} c={c}: {e}", op.label()));
            }
            let row = cell_row("http", op, c, r);
            progress.done(&row);
            rows.push(row);
        }
    }
    let rss_peak = procfs::vm_kib(server.pid(), "VmHWM");
    let rss_now = procfs::vm_kib(server.pid(), "VmRSS");

    // 3b. What the audit trail and the metrics cost: the same build with both off
    // (`P11KMS_AUDIT=off P11KMS_METRICS=off`) over the same token. At c=16, the target's
    // level, cells of the two servers alternate for a few rounds, so that drift in what else
    // the machine does falls on both alike; the target takes the median of the rounds' ratios.
    let mut paired = Vec::new();
    if ops.contains(&Op::DataKeyWithoutPlaintext) {
        progress.start("starting p11kms serve without its audit trail and metrics");
        let log = state.join("bench-server-noaudit.log");
        let plain = Server::start_env(
            state,
            &log,
            args.server_bin.as_deref(),
            &[],
            &[("P11KMS_AUDIT", "off"), ("P11KMS_METRICS", "off")],
        )?;
        let plain_signer = super::server::signer(config, state, plain.addr)?;
        let work = Arc::new(load::Workload::new(
            Op::DataKeyWithoutPlaintext.name(),
            wire_bodies(Op::DataKeyWithoutPlaintext, &fx),
        ));
        for &c in &args.concurrency {
            let rounds = if c == 16 { PAIRED_ROUNDS } else { 1 };
            let mut offs = Vec::new();
            for round in 1..=rounds {
                progress.start(&format!("http without audit and metrics c={c}"));
                let off = load::run_cell(
                    &plain.target(&plain_signer, &progress.count),
                    &work,
                    c,
                    warm,
                    measure,
                );
                let mut row = cell_row(OFF_LAYER, Op::DataKeyWithoutPlaintext, c, off);
                row.ceiling = None;
                progress.done(&row);
                if c == 16 {
                    progress.start(&format!("http with audit and metrics c={c}, round {round}"));
                    let on = load::run_cell(
                        &server.target(&signer, &progress.count),
                        &work,
                        c,
                        warm,
                        measure,
                    );
                    let on = cell_row("http (paired)", Op::DataKeyWithoutPlaintext, c, on);
                    progress.done(&on);
                    paired.push(Paired {
                        on: on.rate(),
                        off: row.rate(),
                        on_cpu_us: on.cpu_us,
                        off_cpu_us: row.cpu_us,
                    });
                }
                offs.push(row);
            }
            // The round of median throughput stands for the level in the table.
            offs.sort_by(|a, b| a.rate().total_cmp(&b.rate()));
            if let Some(mid) = (!offs.is_empty()).then(|| offs.swap_remove(offs.len() / 2)) {
                rows.push(mid);
            }
        }
        drop(plain);
    }
    drop(server);

    // 4. The HTTP floor: the same load against a server that answers without doing anything.
    progress.start("starting the HTTP floor server");
    let floor_log = state.join("bench-floor.log");
    // Always this build's floor, also when --server-bin measures another server.
    let floor = Server::start(state, &floor_log, None, &["--http-floor"])?;
    let floor_work = Arc::new(load::Workload::new(
        Op::DataKeyWithoutPlaintext.name(),
        wire_bodies(Op::DataKeyWithoutPlaintext, &fx),
    ));
    for &c in &args.concurrency {
        progress.start(&format!("http floor c={c}"));
        let target = floor.target(&signer, &progress.count);
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
        &paired,
    ))
}

/// Rounds of alternating cells (trail and metrics off, then on) at c=16.
const PAIRED_ROUNDS: usize = 5;

/// One round of the trail-and-metrics comparison: ops/s and server CPU µs per op, on and off.
pub(super) struct Paired {
    pub(super) on: f64,
    pub(super) off: f64,
    pub(super) on_cpu_us: Option<f64>,
    pub(super) off_cpu_us: Option<f64>,
}

/// The table's layer of the server without its trail and metrics.
pub(super) const OFF_LAYER: &str = "http, audit+metrics off";

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
