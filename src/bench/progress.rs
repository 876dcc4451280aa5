//! The live display of the main run: one bar over the cells, with the current cell's rate.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

use super::measure::Row;

/// The live display: one bar over the cells, with the current cell's rate.
pub(super) struct Progress {
    pub(super) bar: ProgressBar,
    pub(super) count: Arc<AtomicU64>,
    pub(super) stop: Arc<AtomicBool>,
    pub(super) ticker: Option<std::thread::JoinHandle<()>>,
}

impl Progress {
    pub(super) fn new(cells: u64) -> Progress {
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

    pub(super) fn start(&self, what: &str) {
        self.bar.set_message(what.to_owned());
    }

    pub(super) fn done(&self, row: &Row) {
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

    pub(super) fn note(&self, line: &str) {
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
