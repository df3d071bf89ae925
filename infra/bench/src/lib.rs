//! Bench-only helpers shared by the `cold-start` harness, the `load` generator and `worker-cpu`: latency summaries,
//! a process's CPU time, and Keel's webhook signing scheme (the sender's side). Nothing here is used by a deployed
//! function.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::time::Duration;

/// A process's CPU time so far (utime + stime from /proc/<pid>/stat, in clock ticks of 1/100 s).
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces; fields after its closing parenthesis are space-separated.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

/// min / median / p90 / p99 / max of a set of samples (nearest-rank percentiles).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    pub count: usize,
    pub min: Duration,
    pub p50: Duration,
    pub p90: Duration,
    pub p99: Duration,
    pub max: Duration,
}

impl Summary {
    /// `None` for an empty set.
    pub fn of(samples: &[Duration]) -> Option<Self> {
        let mut sorted = samples.to_vec();
        sorted.sort_unstable();
        let count = sorted.len();
        let rank = |p: f64| -> Duration {
            // Nearest rank: the smallest sample with at least p of the samples at or below it.
            let index = ((p * count as f64).ceil() as usize).clamp(1, count) - 1;
            sorted.get(index).copied().unwrap_or_default()
        };
        Some(Self {
            count,
            min: *sorted.first()?,
            p50: rank(0.50),
            p90: rank(0.90),
            p99: rank(0.99),
            max: *sorted.last()?,
        })
    }
}

/// Milliseconds with two decimals, for tables.
pub fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1e3)
}

/// Keel's scheme: hex HMAC-SHA256 over `{timestamp}.{body}`.
pub fn keel_signature(secret: &[u8], timestamp: &str, body: &[u8]) -> String {
    // HMAC accepts keys of any length, so this never fails; an empty MAC is what a caller would notice.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return String::new();
    };
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// A JSON webhook body of exactly `size` bytes (at least the fixed envelope, ~60 bytes), padded with a `data` string.
pub fn json_body(size: usize, event_type: &str) -> String {
    let head = format!(r#"{{"type":"{event_type}","id":"evt_bench","data":""#);
    let tail = r#""}"#;
    let pad = size.saturating_sub(head.len() + tail.len());
    let mut body = String::with_capacity(size);
    body.push_str(&head);
    body.extend(std::iter::repeat_n('x', pad));
    body.push_str(tail);
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let samples: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let s = Summary::of(&samples).unwrap();
        assert_eq!(
            (s.min, s.p50, s.p90, s.p99, s.max),
            (
                Duration::from_millis(1),
                Duration::from_millis(50),
                Duration::from_millis(90),
                Duration::from_millis(99),
                Duration::from_millis(100)
            )
        );
        assert!(Summary::of(&[]).is_none());
    }

    #[test]
    fn bodies_are_exact_size_json() {
        let body = json_body(1024, "invoice.paid");
        assert_eq!(body.len(), 1024);
        let value: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(value["type"], "invoice.paid");
    }

    #[test]
    fn signature_matches_an_independent_computation() {
        // python3: hmac.new(b"bench-secret", b"1700000000.{}", hashlib.sha256).hexdigest()
        assert_eq!(
            keel_signature(b"bench-secret", "1700000000", b"{}"),
            "e6b89adfa254472008df6fc2315abae870d640d918e3e7ce201b938d373efb28"
        );
    }
}
