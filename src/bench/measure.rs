//! Measurement plumbing: latency percentiles, the table's rows, CPU per operation, and the
//! in-process cells (threads calling a closure for a warm-up and a measuring window).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::load::CellResult;
use super::ops::Ceiling;
use super::procfs;
use crate::error::Result;

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Lat {
    pub(super) p50: f64,
    pub(super) p99: f64,
    pub(super) max: f64,
}

impl Lat {
    pub(super) fn of(mut ns: Vec<u64>) -> Lat {
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
pub(super) struct Row {
    pub(super) layer: &'static str,
    pub(super) what: String,
    pub(super) conc: usize,
    pub(super) ops: u64,
    pub(super) secs: f64,
    pub(super) lat: Lat,
    /// CPU time per operation of the process doing the work (µs).
    pub(super) cpu_us: Option<f64>,
    /// CPU time per operation of the load generator (µs), end to end only.
    pub(super) client_cpu_us: Option<f64>,
    pub(super) errors: u64,
    pub(super) ceiling: Option<Ceiling>,
}

impl Row {
    pub(super) fn rate(&self) -> f64 {
        if self.secs > 0.0 {
            self.ops as f64 / self.secs
        } else {
            0.0
        }
    }
}

pub(super) fn per_op_us(cpu: Option<Duration>, ops: u64) -> Option<f64> {
    cpu.filter(|_| ops > 0)
        .map(|c| c.as_secs_f64() * 1e6 / ops as f64)
}

/// Warm-up before each measuring window.
pub(super) fn warmup(seconds: f64) -> Duration {
    Duration::from_secs_f64((seconds / 4.0).min(1.0))
}

/// Runs `f(thread, n)` on `threads` threads for warm-up + window; counts what completes in
/// the window, with this process's CPU time over the window.
pub(super) fn threaded_cell(
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
}
