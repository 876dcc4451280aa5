//! `p11kms bench`: how fast p11kms is, measured against the token's own ceiling in the same run.
//!
//! One run, on a fresh embedded SoftHSM token in a temporary state folder:
//! 1. the **ceiling**: raw `cryptoki` loops doing exactly the token calls one request needs
//!    ([`crate::hsm::CeilingOp`]), on as many sessions/threads as the server's pool;
//! 2. the **library**: the same operations through [`Kms`](crate::kms::Kms), in this process;
//! 3. **end to end**: `p11kms serve` as a separate process on loopback, driven by the load
//!    generator in [`load`] with SigV4-signed requests over keep-alive connections.
//!
//! Every figure is set against the ceiling of the same run and written to `BENCHMARKS.md`
//! (between markers, so hand-written notes around the table survive a re-run).
//! `--scale N` runs the scale measurements instead (N keys and N aliases; see [`scale`]).
//!
//! Rooms: this file holds the options and the run's set-up; `ops` is what is measured,
//! `measure` and `progress` the plumbing and the live display, `server` the server under test,
//! `load` the load generator, `run` the main run, `report` its Markdown, `scale` the scale run,
//! `procfs` what is read about processes and `sign` the load generator's SigV4.

mod load;
mod measure;
mod ops;
mod procfs;
mod progress;
mod report;
mod run;
mod scale;
mod server;
mod sign;

use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::error::{KmsError, Result};

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
    /// The operations of the main run (comma-separated): `all`, `symmetric` (the data-key,
    /// Decrypt and Encrypt rows), `asymmetric` (Sign, Verify, GenerateMac, data key pairs),
    /// or some of data-key-without-plaintext, data-key, decrypt, encrypt, sign-rsa,
    /// sign-ecc, verify-ecc, verify-rsa, mac, data-key-pair. A selection writes its own
    /// section of the output file (`p11kms-bench-<ops>` markers), not the full table's.
    #[arg(long, value_delimiter = ',', default_value = "all")]
    pub ops: Vec<String>,
}

/// Runs the benchmark (or the scale run) and writes the report.
pub fn run(args: BenchArgs) -> Result<()> {
    if args.seconds <= 0.0 || !args.seconds.is_finite() {
        return Err(KmsError::config("--seconds must be positive"));
    }
    let scratch = Scratch::new(args.state_dir.as_deref())?;
    let state = scratch.path.join("state");
    crate::setup::init_embedded(&state)?;
    let config = Config::embedded(&state)?;
    let report = if let Some(n) = args.scale {
        scale::run(&args, &config, &state, n)?
    } else {
        run::run_main(&args, &config, &state)?
    };
    println!("{report}");
    if !args.no_write {
        let marker = if args.scale.is_some() {
            "p11kms-bench-scale".to_owned()
        } else {
            section_name(&args.ops)
        };
        report::write_section(&args.out, &marker, &report)?;
        eprintln!("p11kms bench: results written to {}", args.out.display());
    }
    Ok(())
}

/// The section of the output file a main run writes: `p11kms-bench` for every operation,
/// `p11kms-bench-<ops>` for a selection (`--ops asymmetric`: `p11kms-bench-asymmetric`), so
/// that a partial run never replaces the full table.
fn section_name(ops: &[String]) -> String {
    let ops: Vec<&str> = ops.iter().map(|o| o.trim()).collect();
    if ops == ["all"] {
        "p11kms-bench".to_owned()
    } else {
        format!("p11kms-bench-{}", ops.join("-"))
    }
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
                .map_err(|e| KmsError::io(format!("cannot create {}: {e}", p.display())))?;
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
            .map_err(|e| KmsError::io(format!("cannot create {}: {e}", path.display())))?;
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

#[cfg(test)]
mod tests {
    use super::section_name;

    #[test]
    fn a_selection_has_its_own_section() {
        let s = |v: &[&str]| section_name(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(s(&["all"]), "p11kms-bench");
        assert_eq!(s(&["asymmetric"]), "p11kms-bench-asymmetric");
        assert_eq!(s(&["sign-ecc", " mac"]), "p11kms-bench-sign-ecc-mac");
    }
}
