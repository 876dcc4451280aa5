//! `p11kms bench --scale N`: does a token with N keys and N aliases cost more per request than
//! a token with one? The same figures are taken on a fresh one-key token and on the N-key
//! token (created here, or reused with `--state-dir`): server start-up, idle CPU (metadata
//! upkeep), DescribeKey, data keys, ListKeys pages, refresh costs and how fast a change made
//! by another process reaches a running server.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

use super::load::{self, Workload};
use super::measure::{warmup, Lat};
use super::ops::context_map;
use super::report::RunInfo;
use super::server::{signer, Server};
use super::{procfs, BenchArgs};
use crate::cli::paging;
use crate::config::Config;
use crate::error::{KmsError, Result};
use crate::kms::types::{AliasRequest, CreateKeyRequest, KeyIdRequest};
use crate::kms::Kms;

/// The figures taken on one token.
#[derive(Default)]
struct Figures {
    keys: usize,
    aliases: usize,
    library_open: Duration,
    refresh_unchanged: Duration,
    refresh_changed: Duration,
    startup: Duration,
    idle_cpu: Option<f64>,
    cells: Vec<(String, f64, Lat, u64)>,
    propagation: Vec<Duration>,
    rss_peak: Option<u64>,
}

fn alias_name(i: usize) -> String {
    format!("alias/scale-{i:06}")
}

/// All keys of the store, in ListKeys order.
fn all_keys(kms: &Kms) -> Result<Vec<String>> {
    Ok(paging::all_keys(kms, None)?
        .keys
        .into_iter()
        .map(|k| k.key_id)
        .collect())
}

fn count_aliases(kms: &Kms) -> Result<usize> {
    Ok(paging::all_aliases(kms, None, None)?.aliases.len())
}

/// Brings the token to `n` keys and `n` aliases (`alias/scale-NNNNNN` → the i-th key) on as
/// many threads as the pool has sessions. Returns (keys made, seconds, aliases made, seconds).
fn populate(kms: &Kms, n: usize) -> Result<(usize, f64, usize, f64)> {
    let have = all_keys(kms)?;
    let threads = kms.token().pool_size().max(1);
    let style = ProgressStyle::with_template(
        "{elapsed_precise} [{bar:24}] {pos}/{len} {msg} ({per_sec}, eta {eta})",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    let run = |what: &str, todo: usize, f: &(dyn Fn() -> Result<()> + Sync)| -> Result<f64> {
        let bar = ProgressBar::new(todo as u64).with_style(style.clone());
        bar.set_message(what.to_owned());
        let left = AtomicUsize::new(todo);
        let t0 = Instant::now();
        std::thread::scope(|s| {
            let workers: Vec<_> = (0..threads)
                .map(|_| {
                    s.spawn(|| -> Result<()> {
                        while left
                            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                                v.checked_sub(1)
                            })
                            .is_ok()
                        {
                            f()?;
                            bar.inc(1);
                        }
                        Ok(())
                    })
                })
                .collect();
            for w in workers {
                w.join()
                    .map_err(|_| KmsError::internal("creator thread panicked"))??;
            }
            Ok::<_, KmsError>(())
        })?;
        bar.finish_and_clear();
        Ok(t0.elapsed().as_secs_f64())
    };
    let make_keys = n.saturating_sub(have.len());
    let key_secs = run("keys", make_keys, &|| {
        kms.create_key(CreateKeyRequest {
            description: Some("p11kms bench --scale".into()),
            ..Default::default()
        })
        .map(drop)
    })?;
    let keys = all_keys(kms)?;
    let existing = count_aliases(kms)?;
    let next = AtomicUsize::new(existing);
    let make_aliases = n.saturating_sub(existing);
    let alias_secs = run("aliases", make_aliases, &|| {
        let i = next.fetch_add(1, Ordering::Relaxed);
        kms.create_alias(AliasRequest {
            scope: None,
            alias_name: Some(alias_name(i)),
            target_key_id: Some(keys[i % keys.len()].clone().into()),
        })
    })?;
    Ok((make_keys, key_secs, make_aliases, alias_secs))
}

/// Takes the figures on the token in `state` (which must hold `alias/scale-000000`).
fn measure(args: &BenchArgs, config: &Config, state: &Path) -> Result<Figures> {
    let t0 = Instant::now();
    let kms = crate::app::open(config)?;
    let mut f = Figures {
        library_open: t0.elapsed(),
        ..Default::default()
    };
    let keys = all_keys(&kms)?;
    f.keys = keys.len();
    f.aliases = count_aliases(&kms)?;
    // The first refresh after open re-lists once (the stamp the load was built at is unknown);
    // the steady state is the second.
    kms.refresh()?;
    let t0 = Instant::now();
    kms.refresh()?;
    f.refresh_unchanged = t0.elapsed();
    // A change by another process (here: another service over the token), then a refresh.
    {
        let other = crate::app::open(config)?;
        other.update_alias(AliasRequest {
            scope: None,
            alias_name: Some(alias_name(0)),
            target_key_id: Some(keys[0].clone().into()),
        })?;
    }
    let t0 = Instant::now();
    kms.refresh()?;
    f.refresh_changed = t0.elapsed();

    let server = Server::start(
        state,
        &state.join("bench-scale-server.log"),
        args.server_bin.as_deref(),
        &[],
    )?;
    f.startup = server.startup;
    // Idle upkeep once start-up work (the first orphan scan, seconds at 10,000 keys) is done.
    std::thread::sleep(Duration::from_secs(6));
    let c0 = procfs::cpu_time(Some(server.pid()));
    std::thread::sleep(Duration::from_secs(5));
    let c1 = procfs::cpu_time(Some(server.pid()));
    f.idle_cpu = c0
        .zip(c1)
        .map(|(a, b)| b.saturating_sub(a).as_secs_f64() / 5.0);

    let signer = signer(config, state, server.addr)?;
    let measure = Duration::from_secs_f64(args.seconds);
    let warm = warmup(args.seconds);
    let middle = &keys[keys.len() / 2];
    let ctx = context_map();
    let alias = alias_name(0);
    let cells: Vec<(String, &str, serde_json::Value, usize)> = vec![
        (
            "DescribeKey by alias".into(),
            "DescribeKey",
            serde_json::json!({ "KeyId": alias }),
            1,
        ),
        (
            "DescribeKey by key id".into(),
            "DescribeKey",
            serde_json::json!({ "KeyId": keys[0] }),
            1,
        ),
        (
            "GenerateDataKeyWithoutPlaintext by alias".into(),
            "GenerateDataKeyWithoutPlaintext",
            serde_json::json!({ "KeyId": alias, "KeySpec": "AES_256", "EncryptionContext": ctx }),
            1,
        ),
        (
            "GenerateDataKeyWithoutPlaintext by alias".into(),
            "GenerateDataKeyWithoutPlaintext",
            serde_json::json!({ "KeyId": alias, "KeySpec": "AES_256", "EncryptionContext": ctx }),
            16,
        ),
        (
            "ListKeys, first page of 100".into(),
            "ListKeys",
            serde_json::json!({ "Limit": 100 }),
            1,
        ),
        (
            "ListKeys, page of 100 from the middle".into(),
            "ListKeys",
            serde_json::json!({ "Limit": 100, "Marker": middle }),
            1,
        ),
    ];
    let progress = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let target = server.target(&signer, &progress);
    for (label, op, body, conc) in cells {
        let work = Arc::new(Workload::new(op, vec![body.to_string().into_bytes()]));
        let r = load::run_cell(&target, &work, conc, warm, measure);
        let rate = r.ops as f64 / r.window.as_secs_f64().max(1e-9);
        eprintln!("scale: {} keys: {label} c={conc}: {rate:.0} ops/s", f.keys);
        f.cells.push((
            format!("{label}, c={conc}"),
            rate,
            Lat::of(r.latencies_ns),
            r.errors,
        ));
    }

    // Propagation: an alias made by another process, until the server answers for it.
    for round in 0..3 {
        let name = format!("alias/scale-probe-{}-{round}", std::process::id());
        kms.create_alias(AliasRequest {
            scope: None,
            alias_name: Some(name.clone()),
            target_key_id: Some(keys[0].clone().into()),
        })?;
        let t0 = Instant::now();
        let work = Arc::new(Workload::new(
            "DescribeKey",
            vec![serde_json::json!({ "KeyId": name })
                .to_string()
                .into_bytes()],
        ));
        // One request every 50 ms: polling must not load the server it is waiting for.
        loop {
            if load::one_request(&target, &work) == Ok(200) {
                break;
            }
            if t0.elapsed() > Duration::from_secs(120) {
                return Err(KmsError::internal(format!(
                    "the server did not see {name} within 120 s"
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        f.propagation.push(t0.elapsed());
        kms.delete_alias(AliasRequest {
            scope: None,
            alias_name: Some(name),
            target_key_id: None,
        })?;
        // Let the server take the deletion in before the next round starts its clock.
        let t1 = Instant::now();
        while load::one_request(&target, &work) == Ok(200)
            && t1.elapsed() < Duration::from_secs(120)
        {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    f.rss_peak = procfs::vm_kib(server.pid(), "VmHWM");
    // Touch DescribeKey through the library too, so a broken store shows up as an error.
    kms.describe_key(KeyIdRequest {
        key_id: Some(alias.into()),
        ..Default::default()
    })?;
    Ok(f)
}

pub(super) fn run(args: &BenchArgs, config: &Config, state: &Path, n: usize) -> Result<String> {
    if n == 0 {
        return Err(KmsError::config("--scale needs at least 1 key"));
    }
    let load_before = procfs::loadavg();
    let kms = crate::app::open(config)?;
    // The one-key reference, on the same token before it grows (SoftHSM reads its token
    // folder once per process, so a second token cannot be opened here). A reused token that
    // already holds keys has no reference.
    let small = if all_keys(&kms)?.len() <= 1 {
        populate(&kms, 1)?;
        eprintln!("scale: measuring with one key");
        Some(measure(args, config, state)?)
    } else {
        None
    };
    eprintln!("scale: creating {n} keys and {n} aliases");
    let created = populate(&kms, n)?;
    eprintln!("scale: measuring with {n} keys");
    let big = measure(args, config, state)?;
    let info = RunInfo::collect(config, &kms, kms.token().pool_size(), args)?;
    Ok(render(&info, small.as_ref(), &big, created, &load_before))
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn render(
    info: &RunInfo,
    small: Option<&Figures>,
    big: &Figures,
    created: (usize, f64, usize, f64),
    load_before: &str,
) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "### Scale run\n");
    info.header(&mut out);
    let _ = writeln!(
        out,
        "- Machine load: load average {load_before} before, {} after.",
        procfs::loadavg()
    );
    let (nk, ks, na, als) = created;
    let rate = |n: usize, s: f64| {
        if n > 0 && s > 0.0 {
            format!(
                "{n} in {s:.1} s ({:.1}/s, {:.1} ms each)",
                n as f64 / s,
                s * 1e3 / n as f64
            )
        } else {
            "none (already there)".into()
        }
    };
    let _ = writeln!(
        out,
        "- Created through the library on {} threads: keys {}; aliases {}.",
        info.sessions,
        rate(nk, ks),
        rate(na, als)
    );
    let _ = writeln!(out);
    let col = |f: Option<&Figures>, g: &dyn Fn(&Figures) -> String| f.map_or("n/a".into(), g);
    let _ = writeln!(
        out,
        "| figure | {} | {} |",
        col(small, &|f| format!(
            "{} key(s), {} alias(es)",
            f.keys, f.aliases
        )),
        format_args!("{} keys, {} aliases", big.keys, big.aliases)
    );
    let _ = writeln!(out, "|---|---:|---:|");
    let mut line = |name: &str, g: &dyn Fn(&Figures) -> String| {
        let _ = writeln!(out, "| {name} | {} | {} |", col(small, g), g(big));
    };
    line("server start-up (spawn → `listening on`)", &|f| {
        ms(f.startup)
    });
    line("library open (`app::open`)", &|f| ms(f.library_open));
    line("`Kms::refresh()`, nothing changed", &|f| {
        ms(f.refresh_unchanged)
    });
    line(
        "`Kms::refresh()` after another process's change (full re-list)",
        &|f| ms(f.refresh_changed),
    );
    line("server CPU while idle (5 s, from 6 s after start)", &|f| {
        f.idle_cpu
            .map_or("?".into(), |c| format!("{:.1} % of a core", c * 100.0))
    });
    for i in 0..big.cells.len() {
        let name = big.cells[i].0.clone();
        line(&format!("{name}: ops/s, p50 / p99 ms"), &|f| {
            f.cells.get(i).map_or("?".into(), |(_, rate, lat, errors)| {
                let e = if *errors > 0 {
                    format!(" ({errors} errors)")
                } else {
                    String::new()
                };
                format!("{rate:.0}, {:.3} / {:.3}{e}", lat.p50, lat.p99)
            })
        });
    }
    line(
        "alias made by another process → seen by the server (3 tries)",
        &|f| {
            let v: Vec<String> = f.propagation.iter().map(|d| ms(*d)).collect();
            v.join(", ")
        },
    );
    line("server peak RSS (VmHWM)", &|f| {
        f.rss_peak
            .map_or("?".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0))
    });
    out
}
