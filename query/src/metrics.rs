//! Prometheus metrics in the text exposition format.
//!
//! Label values are fixed strings chosen by the server (route templates,
//! methods, status codes, queue names), never request data, so nothing a
//! client sends can reach a metric.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds (seconds) of the latency histogram buckets.
const BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, seconds: f64) {
        for (i, bound) in BUCKETS.iter().enumerate() {
            if seconds <= *bound {
                self.counts[i] += 1;
            }
        }
        self.sum += seconds;
        self.count += 1;
    }
}

/// The server's metrics.
#[derive(Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, String, u16), u64>>,
    latency: Mutex<BTreeMap<String, Histogram>>,
    queue_depth: Mutex<BTreeMap<&'static str, usize>>,
    rejected: Mutex<BTreeMap<&'static str, u64>>,
    generated_tokens: AtomicU64,
    prompt_tokens: AtomicU64,
    embedded_sequences: AtomicU64,
    embed_batches: AtomicU64,
    decode_steps: AtomicU64,
    chunks_written: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Metrics {
    /// Counts a finished request and its latency. `route` is the matched
    /// route template (e.g. `/v1/collections/{name}/search`).
    pub fn observe_request(&self, route: &str, method: &str, status: u16, elapsed: Duration) {
        *lock(&self.requests)
            .entry((route.to_string(), method.to_string(), status))
            .or_default() += 1;
        lock(&self.latency)
            .entry(route.to_string())
            .or_default()
            .observe(elapsed.as_secs_f64());
    }

    /// Sets the number of items waiting in a queue.
    pub fn set_queue_depth(&self, queue: &'static str, depth: usize) {
        lock(&self.queue_depth).insert(queue, depth);
    }

    /// Counts a request turned away because a queue was full.
    pub fn rejected(&self, queue: &'static str) {
        *lock(&self.rejected).entry(queue).or_default() += 1;
    }

    /// Counts generated tokens.
    pub fn add_generated_tokens(&self, n: usize) {
        self.generated_tokens.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Counts prompt tokens fed to the generator.
    pub fn add_prompt_tokens(&self, n: usize) {
        self.prompt_tokens.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Counts one encoder forward pass over `sequences` sequences.
    pub fn observe_embed(&self, sequences: usize, _elapsed: Duration) {
        self.embedded_sequences
            .fetch_add(sequences as u64, Ordering::Relaxed);
        self.embed_batches.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one batched decode step (one token for each running generation).
    pub fn observe_decode_step(&self) {
        self.decode_steps.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts chunks written to a store.
    pub fn add_chunks_written(&self, n: usize) {
        self.chunks_written.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// The metrics in Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let counter = |out: &mut String, name: &str, help: &str, value: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
            );
        };
        out.push_str("# HELP eerag_http_requests_total HTTP requests by route, method and status.\n# TYPE eerag_http_requests_total counter\n");
        for ((route, method, status), n) in lock(&self.requests).iter() {
            let _ = writeln!(
                out,
                "eerag_http_requests_total{{route=\"{route}\",method=\"{method}\",status=\"{status}\"}} {n}"
            );
        }
        out.push_str("# HELP eerag_http_request_duration_seconds Request latency by route.\n# TYPE eerag_http_request_duration_seconds histogram\n");
        for (route, h) in lock(&self.latency).iter() {
            for (bound, n) in BUCKETS.iter().zip(h.counts) {
                let _ = writeln!(
                    out,
                    "eerag_http_request_duration_seconds_bucket{{route=\"{route}\",le=\"{bound}\"}} {n}"
                );
            }
            let _ = writeln!(
                out,
                "eerag_http_request_duration_seconds_bucket{{route=\"{route}\",le=\"+Inf\"}} {}\neerag_http_request_duration_seconds_sum{{route=\"{route}\"}} {}\neerag_http_request_duration_seconds_count{{route=\"{route}\"}} {}",
                h.count, h.sum, h.count
            );
        }
        out.push_str("# HELP eerag_queue_depth Items waiting for a model worker.\n# TYPE eerag_queue_depth gauge\n");
        for (queue, n) in lock(&self.queue_depth).iter() {
            let _ = writeln!(out, "eerag_queue_depth{{queue=\"{queue}\"}} {n}");
        }
        out.push_str("# HELP eerag_rejected_total Requests refused with 503 because a queue was full.\n# TYPE eerag_rejected_total counter\n");
        for (queue, n) in lock(&self.rejected).iter() {
            let _ = writeln!(out, "eerag_rejected_total{{queue=\"{queue}\"}} {n}");
        }
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        counter(
            &mut out,
            "eerag_generated_tokens_total",
            "Tokens generated.",
            load(&self.generated_tokens),
        );
        counter(
            &mut out,
            "eerag_prompt_tokens_total",
            "Prompt tokens fed to the generator.",
            load(&self.prompt_tokens),
        );
        counter(
            &mut out,
            "eerag_embedded_sequences_total",
            "Sequences embedded by the encoder.",
            load(&self.embedded_sequences),
        );
        counter(
            &mut out,
            "eerag_decode_steps_total",
            "Batched generator decode steps (each feeds every running generation one token).",
            load(&self.decode_steps),
        );
        counter(
            &mut out,
            "eerag_embed_batches_total",
            "Encoder forward passes.",
            load(&self.embed_batches),
        );
        counter(
            &mut out,
            "eerag_chunks_written_total",
            "Chunks written to the store.",
            load(&self.chunks_written),
        );
        out
    }
}
