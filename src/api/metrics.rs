//! `GET /metrics`: the Prometheus text format (0.0.4), rendered by `prometheus-client` from
//! counters the rooms keep themselves ([`RequestMetrics`] here; the token's calls, the session
//! pool, the epoch caches and the metadata store through [`Kms::stats`]). Nothing is
//! registered per request: a request costs a few relaxed atomic adds (and, for an error, one
//! short lock on the map of error names), and the collector reads every number at scrape
//! time.
//!
//! Label values are bounded and public: operation names, AWS error names, PKCS#11 function
//! names, key states, the token's model and manufacturer. Never a key id, alias, principal,
//! account or encryption context (cardinality, and what an unauthenticated scrape may see).

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use super::operations::Op;
use crate::kms::Kms;
use crate::latency::{Histogram, Snapshot};

/// The outcome label of a request that succeeded (else the AWS error name).
pub(super) const OK: &str = "ok";
/// The operation label of a request whose `X-Amz-Target` names no operation.
const UNKNOWN_OP: &str = "unknown";
/// The label set of a metric without labels.
const NO_LABELS: [(&str, &str); 0] = [];

/// Requests by operation and outcome, and their latency by operation.
pub(super) struct RequestMetrics {
    /// Index `Op::index()`, and one more for requests naming no operation.
    per_op: Box<[OpCounts]>,
    /// Failed requests by (operation index, error name). Error names are `&'static str`
    /// from a fixed set, so the map stays small.
    errors: Mutex<HashMap<(usize, &'static str), u64>>,
}

#[derive(Default)]
struct OpCounts {
    ok: AtomicU64,
    latency: Histogram,
}

impl RequestMetrics {
    pub(super) fn new() -> RequestMetrics {
        RequestMetrics {
            per_op: (0..=Op::ALL.len()).map(|_| OpCounts::default()).collect(),
            errors: Mutex::new(HashMap::new()),
        }
    }

    /// Counts one finished KMS request.
    pub(super) fn record(&self, op: Option<Op>, error: Option<&'static str>, took: Duration) {
        let i = op.map_or(Op::ALL.len(), Op::index);
        let Some(c) = self.per_op.get(i) else { return };
        c.latency.observe(took);
        match error {
            None => {
                c.ok.fetch_add(1, Ordering::Relaxed);
            }
            Some(name) => {
                *crate::sync::lock(&self.errors)
                    .entry((i, name))
                    .or_insert(0) += 1;
            }
        }
    }

    fn op_name(i: usize) -> &'static str {
        Op::ALL.get(i).map_or(UNKNOWN_OP, |op| op.name())
    }
}

/// The registry `/metrics` renders: one collector over the request counters and the service.
pub(super) fn registry(kms: Arc<Kms>, requests: Arc<RequestMetrics>) -> Registry {
    let mut registry = Registry::with_prefix("p11kms");
    registry.register_collector(Box::new(Scrape { kms, requests }));
    registry
}

/// The text of one scrape.
pub(super) fn render(registry: &Registry) -> String {
    let mut out = String::with_capacity(16 * 1024);
    if prometheus_client::encoding::prometheus_text::encode(&mut out, registry).is_err() {
        // Writing to a String cannot fail; an encoder error would be a bug of ours.
        out.clear();
    }
    out
}

struct Scrape {
    kms: Arc<Kms>,
    requests: Arc<RequestMetrics>,
}

impl fmt::Debug for Scrape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Scrape")
    }
}

/// One family of `(labels, value)` counters.
fn counters<L: prometheus_client::encoding::EncodeLabelSet>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: &[(L, u64)],
) -> fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, v) in series {
        ConstCounter::new(*v).encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

fn counter(enc: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> fmt::Result {
    let m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    ConstCounter::new(v).encode(m)
}

/// One family of gauges.
fn gauges<L: prometheus_client::encoding::EncodeLabelSet>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    series: &[(L, f64)],
) -> fmt::Result {
    let mut m = enc.encode_descriptor(name, help, unit, MetricType::Gauge)?;
    for (labels, v) in series {
        ConstGauge::new(*v).encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

fn gauge(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    v: f64,
) -> fmt::Result {
    let m = enc.encode_descriptor(name, help, unit, MetricType::Gauge)?;
    ConstGauge::new(v).encode(m)
}

/// One family of histograms in seconds.
fn histograms<L: prometheus_client::encoding::EncodeLabelSet>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: &[(L, &Snapshot)],
) -> fmt::Result {
    let mut m = enc.encode_descriptor(name, help, Some(&Unit::Seconds), MetricType::Histogram)?;
    for (labels, s) in series {
        m.encode_family(labels)?.encode_histogram::<NoLabelSet>(
            s.sum_seconds,
            s.count,
            &s.buckets,
            None,
        )?;
    }
    Ok(())
}

impl Collector for Scrape {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let e = &mut enc;
        let stats = self.kms.stats();
        let token = self.kms.token().description();

        let m = e.encode_descriptor("build", "The p11kms build serving", None, MetricType::Info)?;
        let mut m = m;
        m.encode_info(&[("version", env!("CARGO_PKG_VERSION"))])?;
        let mut m = e.encode_descriptor(
            "token",
            "The PKCS#11 token and module in use",
            None,
            MetricType::Info,
        )?;
        m.encode_info(&[
            ("manufacturer", token.manufacturer.as_str()),
            ("model", token.model.as_str()),
            ("library", token.library.as_str()),
            ("library_version", token.library_version.as_str()),
        ])?;

        // Requests.
        let req = &self.requests;
        let mut outcomes: Vec<([(&str, &str); 2], u64)> = Vec::new();
        for (i, c) in req.per_op.iter().enumerate() {
            let ok = c.ok.load(Ordering::Relaxed);
            if ok > 0 {
                outcomes.push((
                    [("operation", RequestMetrics::op_name(i)), ("outcome", OK)],
                    ok,
                ));
            }
        }
        {
            let errors = crate::sync::lock(&req.errors);
            let mut sorted: Vec<_> = errors.iter().map(|(k, v)| (*k, *v)).collect();
            drop(errors);
            sorted.sort_unstable();
            for ((i, name), n) in sorted {
                outcomes.push((
                    [("operation", RequestMetrics::op_name(i)), ("outcome", name)],
                    n,
                ));
            }
        }
        counters(
            e,
            "requests",
            "KMS API requests by operation and outcome (ok, or the AWS error name)",
            &outcomes,
        )?;
        let latencies: Vec<(usize, Snapshot)> = req
            .per_op
            .iter()
            .enumerate()
            .filter(|(_, c)| c.latency.count() > 0)
            .map(|(i, c)| (i, c.latency.snapshot()))
            .collect();
        let series: Vec<_> = latencies
            .iter()
            .map(|(i, s)| ([("operation", RequestMetrics::op_name(*i))], s))
            .collect();
        histograms(
            e,
            "request_duration",
            "KMS API request latency by operation, from the first byte read to the reply",
            &series,
        )?;

        // The token.
        let t = &stats.token;
        counters(
            e,
            "token_calls",
            "PKCS#11 calls counted by p11kms, by function (one per attempt that reached the token)",
            &[
                ([("function", "C_GenerateRandom")], t.random_calls),
                ([("function", "C_Encrypt")], t.encrypt_calls),
                ([("function", "C_Decrypt")], t.decrypt_calls),
                ([("function", "C_WrapKey")], t.wrap_calls),
                ([("function", "C_UnwrapKey")], t.unwrap_calls),
                ([("function", "C_GenerateKey")], t.generate_key_calls),
                ([("function", "C_DeriveKey")], t.derive_calls),
                ([("function", "C_GetAttributeValue")], t.private_value_reads),
            ],
        )?;
        counter(
            e,
            "token_random_bytes",
            "Bytes drawn from the token's random number generator",
            t.random_bytes,
        )?;
        let p = &stats.pool;
        let series: Vec<_> = p
            .calls
            .iter()
            .filter(|(_, s)| s.count > 0)
            .map(|(f, s)| ([("function", f.name())], s))
            .collect();
        histograms(
            e,
            "token_call_duration",
            "How long token calls held their session, by the PKCS#11 function last counted \
             in the call (other: searches, attribute reads, signatures)",
            &series,
        )?;
        gauge(
            e,
            "session_pool_size",
            "Sessions in the token session pool",
            None,
            p.size as f64,
        )?;
        gauge(
            e,
            "session_pool_in_use",
            "Sessions on loan now",
            None,
            p.in_use as f64,
        )?;
        histograms(
            e,
            "session_pool_wait",
            "Waits for a free token session (only takes that found every session busy)",
            &[(NO_LABELS, &p.waits)],
        )?;
        counter(
            e,
            "session_pool_wait_timeouts",
            "Waits for a token session that gave up",
            p.wait_timeouts,
        )?;

        // Epoch keys.
        let ep = &stats.epochs;
        counter(
            e,
            "epoch_key_derivations",
            "Epoch keys derived in the token for sealing",
            ep.sealing_derivations,
        )?;
        counters(
            e,
            "epoch_cache_lookups",
            "Opening-cache look-ups of epoch keys (a miss derives the key again)",
            &[
                ([("result", "hit")], ep.opening_hits),
                ([("result", "miss")], ep.opening_misses),
            ],
        )?;
        counter(
            e,
            "epoch_cache_evictions",
            "Epoch keys evicted from the opening cache",
            ep.evicted,
        )?;
        gauges(
            e,
            "epoch_keys",
            "Epoch keys held, by cache",
            None,
            &[
                ([("cache", "sealing")], ep.sealing_keys as f64),
                ([("cache", "opening")], ep.opening_keys as f64),
            ],
        )?;

        // Metadata.
        let st = &stats.store;
        if let Some(ms) = st.last_refresh_unix_ms {
            gauge(
                e,
                "metadata_last_refresh_timestamp",
                "When this process last caught up with the token's metadata (Unix time)",
                Some(&Unit::Seconds),
                ms as f64 / 1e3,
            )?;
            let now_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            gauge(
                e,
                "metadata_refresh_lag",
                "How long ago this process last caught up with the token's metadata",
                Some(&Unit::Seconds),
                now_ms.saturating_sub(ms) as f64 / 1e3,
            )?;
        }
        counter(
            e,
            "metadata_refresh_failures",
            "Metadata refreshes that failed (the next round retries)",
            st.refresh_failures,
        )?;
        histograms(
            e,
            "metadata_relist_duration",
            "Full re-lists of the token's metadata records",
            &[(NO_LABELS, &st.relists)],
        )?;
        let keys: Vec<_> = stats
            .keys_by_state
            .iter()
            .map(|(s, n)| ([("state", s.as_str())], *n as f64))
            .collect();
        gauges(e, "keys", "KMS keys by state", None, &keys)?;
        gauge(e, "aliases", "Aliases", None, stats.aliases as f64)?;
        gauge(e, "grants", "Live grants", None, stats.grants as f64)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_count_by_operation_and_outcome() {
        let m = RequestMetrics::new();
        m.record(Some(Op::Encrypt), None, Duration::from_micros(40));
        m.record(Some(Op::Encrypt), Some("NotFoundException"), Duration::ZERO);
        m.record(Some(Op::Encrypt), Some("NotFoundException"), Duration::ZERO);
        m.record(None, Some("UnknownOperationException"), Duration::ZERO);
        let enc = &m.per_op[Op::Encrypt.index()];
        assert_eq!(enc.ok.load(Ordering::Relaxed), 1);
        assert_eq!(enc.latency.count(), 3);
        let errors = crate::sync::lock(&m.errors);
        assert_eq!(
            errors.get(&(Op::Encrypt.index(), "NotFoundException")),
            Some(&2)
        );
        assert_eq!(
            errors.get(&(Op::ALL.len(), "UnknownOperationException")),
            Some(&1)
        );
        assert_eq!(RequestMetrics::op_name(Op::ALL.len()), "unknown");
    }
}
