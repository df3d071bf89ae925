//! Metrics in CloudWatch Embedded Metric Format: whatever an invocation records is written when it ends, in one
//! write to stdout (Lambda ships stdout to CloudWatch Logs, which extracts the metrics). One EMF document per
//! distinct set of dimension values, so an invocation that records under one set (an HTTP request: function,
//! route, status class) writes one document; a worker batch with two providers writes two, still in one write.
//! The local host installs its own [`Sink`] and serves the same metrics in Prometheus text at `GET /metrics`.
//!
//! Written by hand rather than with a crate: the EMF crates on crates.io write one document per metric call or
//! need a global registry flushed on a timer, and neither gives one write per invocation.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::future::Future;
use std::io::Write;
use std::sync::{Arc, OnceLock};

/// Most values of one metric in one EMF document.
const MAX_VALUES: usize = 100;

/// The CloudWatch namespace of every metric.
pub const NAMESPACE: &str = "Keel";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Unit {
    Count,
    Milliseconds,
}

impl Unit {
    fn as_str(self) -> &'static str {
        match self {
            Unit::Count => "Count",
            Unit::Milliseconds => "Milliseconds",
        }
    }
}

/// Dimension name and value pairs, `Function` first.
pub type Dimensions = Vec<(String, String)>;

/// What one invocation recorded: per dimension set, per metric, its values.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Recorded {
    pub sets: BTreeMap<Dimensions, BTreeMap<(String, Unit), Vec<f64>>>,
}

/// Where an invocation's metrics go when it ends.
pub trait Sink: Send + Sync {
    fn write(&self, recorded: &Recorded, timestamp_ms: i64);
}

/// Lambda's sink: the EMF documents, one write to stdout.
struct Stdout;

impl Sink for Stdout {
    fn write(&self, recorded: &Recorded, timestamp_ms: i64) {
        let text = emf(recorded, timestamp_ms);
        if !text.is_empty() {
            let _ = std::io::stdout().lock().write_all(text.as_bytes());
        }
    }
}

static SINK: OnceLock<Arc<dyn Sink>> = OnceLock::new();
/// Functions that have run in this process: the first invocation of each is its cold start (one per process on
/// Lambda; every function of the local host in its one process).
static STARTED: std::sync::Mutex<std::collections::BTreeSet<String>> =
    std::sync::Mutex::new(std::collections::BTreeSet::new());

/// Sends every later invocation's metrics to `sink` instead of stdout (the local host). First call wins.
pub fn install(sink: Arc<dyn Sink>) -> bool {
    SINK.set(sink).is_ok()
}

tokio::task_local! {
    static CURRENT: RefCell<(String, Recorded)>;
}

/// Runs one invocation of `function`, writing what it recorded when it ends.
///
/// The first invocation of each function in the process counts `ColdStart`.
pub async fn scope<F: Future>(function: &str, invocation: F) -> F::Output {
    let bag = RefCell::new((function.to_string(), Recorded::default()));
    let (output, bag) = CURRENT
        .scope(bag, async {
            let first = {
                let mut started = STARTED.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                // Looked up first, so a warm invocation allocates nothing here.
                !started.contains(function) && started.insert(function.to_string())
            };
            if first {
                count("ColdStart", &[], 1.0);
            }
            let output = invocation.await;
            let recorded = CURRENT.with(|bag| std::mem::take(&mut bag.borrow_mut().1));
            (output, recorded)
        })
        .await;
    let sink = SINK.get_or_init(|| Arc::new(Stdout));
    sink.write(&bag, chrono::Utc::now().timestamp_millis());
    output
}

/// Counts `n` of `name` under `dimensions` (besides `Function`), in the current invocation. Outside one, nothing.
pub fn count(name: &str, dimensions: &[(&str, &str)], n: f64) {
    record(name, Unit::Count, dimensions, n);
}

/// Records a duration in milliseconds.
pub fn milliseconds(name: &str, dimensions: &[(&str, &str)], ms: f64) {
    record(name, Unit::Milliseconds, dimensions, ms);
}

fn record(name: &str, unit: Unit, dimensions: &[(&str, &str)], value: f64) {
    let _ = CURRENT.try_with(|bag| {
        let mut bag = bag.borrow_mut();
        let mut set: Dimensions = vec![("Function".to_string(), bag.0.clone())];
        set.extend(dimensions.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        bag.1.sets.entry(set).or_default().entry((name.to_string(), unit)).or_default().push(value);
    });
}

/// The EMF documents of `recorded`, one JSON object per line.
pub fn emf(recorded: &Recorded, timestamp_ms: i64) -> String {
    let mut out = String::new();
    for (dimensions, metrics) in &recorded.sets {
        let names: Vec<&str> = dimensions.iter().map(|(name, _)| name.as_str()).collect();
        // Also per function alone, so alarms can watch a metric across its other dimensions.
        let sets: Vec<Vec<&str>> = if names.len() > 1 { vec![names, vec!["Function"]] } else { vec![names] };
        let definitions: Vec<serde_json::Value> =
            metrics.keys().map(|(name, unit)| serde_json::json!({"Name": name, "Unit": unit.as_str()})).collect();
        // Counts are summed; durations keep each value, at most 100 to a document (EMF's limit per array), so a
        // long batch writes more documents of the same set.
        let chunks = metrics
            .iter()
            .map(|((_, unit), values)| if *unit == Unit::Count { 1 } else { values.len().div_ceil(MAX_VALUES) })
            .max()
            .unwrap_or(1);
        for chunk in 0..chunks {
            let mut document = serde_json::Map::new();
            let mut defined = Vec::new();
            for (((name, unit), values), definition) in metrics.iter().zip(&definitions) {
                let value = match unit {
                    Unit::Count if chunk == 0 => serde_json::json!(values.iter().sum::<f64>()),
                    Unit::Count => continue,
                    Unit::Milliseconds => match values.chunks(MAX_VALUES).nth(chunk) {
                        Some([one]) => serde_json::json!(one),
                        Some(many) => serde_json::json!(many),
                        None => continue,
                    },
                };
                document.insert(name.clone(), value);
                defined.push(definition.clone());
            }
            document.insert(
                "_aws".into(),
                serde_json::json!({
                    "Timestamp": timestamp_ms,
                    "CloudWatchMetrics": [{"Namespace": NAMESPACE, "Dimensions": sets, "Metrics": defined}],
                }),
            );
            for (name, value) in dimensions {
                document.insert(name.clone(), value.clone().into());
            }
            out.push_str(&serde_json::Value::Object(document).to_string());
            out.push('\n');
        }
    }
    out
}

/// Metrics summed over invocations, rendered as Prometheus text: counts as `keel_<name>_total` counters,
/// durations as `keel_<name>_milliseconds` summaries (`_sum` and `_count`).
#[derive(Default)]
pub struct Prometheus {
    totals: std::sync::Mutex<Totals>,
}

/// Per metric (name, unit, dimensions): the sum of its values and how many there were.
type Totals = BTreeMap<(String, Unit, Dimensions), (f64, u64)>;

impl Sink for Prometheus {
    fn write(&self, recorded: &Recorded, _timestamp_ms: i64) {
        let mut totals = self.totals.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for (dimensions, metrics) in &recorded.sets {
            for ((name, unit), values) in metrics {
                let entry = totals.entry((name.clone(), *unit, dimensions.clone())).or_default();
                entry.0 += values.iter().sum::<f64>();
                entry.1 += values.len() as u64;
            }
        }
    }
}

impl Prometheus {
    pub fn render(&self) -> String {
        let totals = self.totals.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut out = String::new();
        let mut typed = std::collections::BTreeSet::new();
        for ((name, unit, dimensions), (sum, samples)) in totals.iter() {
            let base = format!("keel_{}", snake(name));
            let labels = dimensions
                .iter()
                .map(|(k, v)| format!("{}=\"{}\"", snake(k), v.replace('\\', "\\\\").replace('"', "\\\"")))
                .collect::<Vec<_>>()
                .join(",");
            match unit {
                Unit::Count => {
                    if typed.insert(base.clone()) {
                        out.push_str(&format!("# TYPE {base}_total counter\n"));
                    }
                    out.push_str(&format!("{base}_total{{{labels}}} {sum}\n"));
                }
                Unit::Milliseconds => {
                    if typed.insert(base.clone()) {
                        out.push_str(&format!("# TYPE {base}_milliseconds summary\n"));
                    }
                    out.push_str(&format!("{base}_milliseconds_sum{{{labels}}} {sum}\n"));
                    out.push_str(&format!("{base}_milliseconds_count{{{labels}}} {samples}\n"));
                }
            }
        }
        out
    }
}

/// `ColdStart` → `cold_start`.
fn snake(name: &str) -> String {
    let mut out = String::new();
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else if c.is_ascii_alphanumeric() {
            out.push(c);
        } else {
            out.push('_');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_invocation_records_into_its_own_documents() {
        let recorded = CURRENT
            .scope(RefCell::new(("flags-admin".into(), Recorded::default())), async {
                count("Requests", &[("Route", "GET /v1/admin/flags"), ("Status", "2xx")], 1.0);
                milliseconds("Latency", &[("Route", "GET /v1/admin/flags"), ("Status", "2xx")], 12.5);
                count("WebhooksAccepted", &[("Provider", "acme")], 1.0);
                count("WebhooksAccepted", &[("Provider", "acme")], 1.0);
                CURRENT.with(|bag| bag.borrow().1.clone())
            })
            .await;
        let text = emf(&recorded, 1_700_000_000_000);
        let documents: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(documents.len(), 2, "{text}");
        let request = documents.iter().find(|d| d.get("Route").is_some()).unwrap();
        assert_eq!(request["Function"], "flags-admin");
        assert_eq!(request["Requests"], 1.0);
        assert_eq!(request["Latency"], 12.5);
        let directive = &request["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(directive["Namespace"], "Keel");
        assert_eq!(directive["Dimensions"], serde_json::json!([["Function", "Route", "Status"], ["Function"]]));
        assert_eq!(request["_aws"]["Timestamp"], 1_700_000_000_000_i64);
        let webhooks = documents.iter().find(|d| d.get("Provider").is_some()).unwrap();
        assert_eq!(webhooks["WebhooksAccepted"], 2.0, "counts are summed");
        assert_eq!(webhooks["_aws"]["CloudWatchMetrics"][0]["Metrics"][0]["Unit"], "Count");
    }

    #[test]
    fn long_series_are_split_at_emfs_hundred_values_and_counts_summed() {
        let mut recorded = Recorded::default();
        let dims = vec![("Function".to_string(), "webhook-ops".to_string())];
        let set = recorded.sets.entry(dims).or_default();
        set.insert(("PortCalls".into(), Unit::Count), vec![1.0; 1000]);
        set.insert(("Latency".into(), Unit::Milliseconds), (0..250).map(f64::from).collect());
        let text = emf(&recorded, 0);
        let documents: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(documents.len(), 3);
        assert_eq!(documents[0]["PortCalls"], 1000.0);
        assert!(documents[1].get("PortCalls").is_none(), "counted once");
        let sizes: Vec<usize> = documents.iter().map(|d| d["Latency"].as_array().map_or(1, Vec::len)).collect();
        assert_eq!(sizes, [100, 100, 50]);
        let defined = documents[1]["_aws"]["CloudWatchMetrics"][0]["Metrics"].as_array().unwrap().len();
        assert_eq!(defined, 1, "a document defines only the metrics it holds");
    }

    #[test]
    fn outside_an_invocation_nothing_is_recorded_and_prometheus_sums() {
        count("Requests", &[], 1.0);
        let prometheus = Prometheus::default();
        let mut recorded = Recorded::default();
        let dims = vec![("Function".to_string(), "f".to_string()), ("Route".to_string(), "GET /x".to_string())];
        recorded.sets.entry(dims.clone()).or_default().insert(("Requests".into(), Unit::Count), vec![1.0]);
        recorded.sets.entry(dims).or_default().insert(("Latency".into(), Unit::Milliseconds), vec![2.0, 4.0]);
        prometheus.write(&recorded, 0);
        prometheus.write(&recorded, 0);
        let text = prometheus.render();
        assert!(
            text.contains(
                "# TYPE keel_requests_total counter\nkeel_requests_total{function=\"f\",route=\"GET /x\"} 2\n"
            ),
            "{text}"
        );
        assert!(text.contains("keel_latency_milliseconds_sum{function=\"f\",route=\"GET /x\"} 12\n"), "{text}");
        assert!(text.contains("keel_latency_milliseconds_count{function=\"f\",route=\"GET /x\"} 4\n"), "{text}");
        assert_eq!(snake("ColdStart"), "cold_start");
    }
}
