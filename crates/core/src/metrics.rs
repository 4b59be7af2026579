//! Prometheus metrics of every role, in one process-wide registry, rendered by [`render`] for
//! the `/metrics` endpoint (served by `reasonrec-ops`).
//!
//! Names are stable: the Grafana dashboard (`deploy/grafana`) and alerts use them.

use crate::attempt::{AttemptRecord, ErrorClass};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::LazyLock;
use std::sync::atomic::AtomicU64;

pub type Labels = Vec<(&'static str, String)>;
type FloatCounter = Counter<f64, AtomicU64>;
type FloatGauge = Gauge<f64, AtomicU64>;

/// Histogram buckets as a constructor (families need one).
#[derive(Clone)]
pub struct Buckets(&'static [f64]);

impl MetricConstructor<Histogram> for Buckets {
    fn new_metric(&self) -> Histogram {
        Histogram::new(self.0.iter().copied())
    }
}

const LATENCY: &[f64] = &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0];
const BATCH: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];

pub struct Metrics {
    registry: Registry,
    /// Tasks finished by a worker or recorded by the coordinator, by stage and outcome
    /// (completed, reused, already_done, failed, skipped, retried, dead_lettered).
    pub tasks: Family<Labels, Counter>,
    pub teacher_duration: Family<Labels, Histogram, Buckets>,
    pub teacher_tokens: Family<Labels, Counter>,
    pub teacher_cost: Family<Labels, FloatCounter>,
    pub teacher_rate_limited: Family<Labels, Counter>,
    pub teacher_retries: Family<Labels, Counter>,
    pub rate_limit_wait: Family<Labels, FloatCounter>,
    pub in_flight: Gauge,
    pub commit_batch: Histogram,
    pub queue_messages: Family<Labels, Gauge>,
    pub run_tasks: Family<Labels, Gauge>,
    pub run_cost: Family<Labels, FloatGauge>,
    pub published: Counter,
    pub dead_letters_recorded: Counter,
    pub teacher_usage_anomalies: Family<Labels, Counter>,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process-wide metrics.
pub fn metrics() -> &'static Metrics {
    &METRICS
}

/// The Prometheus text exposition of every metric.
pub fn render() -> String {
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut out, &METRICS.registry);
    out
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("reasonrec");
        let m = Self {
            registry: Registry::default(),
            tasks: Family::default(),
            teacher_duration: Family::new_with_constructor(Buckets(LATENCY)),
            teacher_tokens: Family::default(),
            teacher_cost: Family::default(),
            teacher_rate_limited: Family::default(),
            teacher_retries: Family::default(),
            rate_limit_wait: Family::default(),
            in_flight: Gauge::default(),
            commit_batch: Histogram::new(BATCH.iter().copied()),
            queue_messages: Family::default(),
            run_tasks: Family::default(),
            run_cost: Family::default(),
            published: Counter::default(),
            dead_letters_recorded: Counter::default(),
            teacher_usage_anomalies: Family::default(),
        };
        let build: Family<Labels, Gauge> = Family::default();
        build.get_or_create(&vec![("version", env!("CARGO_PKG_VERSION").to_string())]).set(1);
        registry.register("build_info", "Build of this process (value 1)", build);
        registry.register("tasks", "Tasks finished, by stage and outcome", m.tasks.clone());
        registry.register(
            "teacher_request_duration_seconds",
            "Teacher attempts (waiting for the endpoint's limits included), by endpoint and outcome",
            m.teacher_duration.clone(),
        );
        registry.register(
            "teacher_tokens",
            "Tokens of accepted answers, by endpoint and direction",
            m.teacher_tokens.clone(),
        );
        registry.register(
            "teacher_cost_usd",
            "Cost of teacher calls in US dollars, by endpoint",
            m.teacher_cost.clone(),
        );
        registry.register("teacher_rate_limited", "429 answers, by endpoint", m.teacher_rate_limited.clone());
        registry.register(
            "teacher_retries",
            "Teacher attempts after the first of a call, by endpoint",
            m.teacher_retries.clone(),
        );
        registry.register(
            "rate_limit_wait_seconds",
            "Time calls waited for an endpoint's limits (slots, pauses, rates, token budgets)",
            m.rate_limit_wait.clone(),
        );
        registry.register("worker_in_flight", "Tasks this worker is processing now", m.in_flight.clone());
        registry.register("db_commit_batch_size", "Tasks per commit transaction", m.commit_batch.clone());
        registry.register("queue_messages", "Messages waiting in each queue (coordinator)", m.queue_messages.clone());
        registry.register("run_tasks", "Tasks of each active run by state (coordinator)", m.run_tasks.clone());
        registry.register("run_cost_usd", "Teacher cost of each active run so far (coordinator)", m.run_cost.clone());
        registry.register("outbox_published", "Task messages published with a confirm", m.published.clone());
        registry.register(
            "dead_letters_recorded",
            "Dead-lettered messages turned into failed tasks",
            m.dead_letters_recorded.clone(),
        );
        registry.register(
            "teacher_usage_anomalies",
            "Answers whose reported token usage was implausible and replaced by estimates, by endpoint",
            m.teacher_usage_anomalies.clone(),
        );
        Self { registry, ..m }
    }

    /// Counts a finished task.
    pub fn task(&self, stage: &str, outcome: &'static str) {
        self.tasks.get_or_create(&vec![("stage", stage.to_string()), ("outcome", outcome.to_string())]).inc();
    }

    /// Records one teacher attempt (the row also written to the cost ledger).
    pub fn attempt(&self, a: &AttemptRecord) {
        let outcome = match a.error_class {
            None => "ok",
            Some(ErrorClass::RateLimited) => "rate_limited",
            Some(ErrorClass::Server) => "server",
            Some(ErrorClass::Timeout) => "timeout",
            Some(ErrorClass::Connect) => "connect",
            Some(ErrorClass::Malformed) => "malformed",
            Some(ErrorClass::Rejected) => "rejected",
            Some(ErrorClass::TooLarge) => "too_large",
            Some(ErrorClass::Redirect) => "redirect",
            Some(_) => "other",
        };
        let ep = || a.endpoint.clone();
        self.teacher_duration
            .get_or_create(&vec![("endpoint", ep()), ("outcome", outcome.to_string())])
            .observe(f64::from(a.duration_ms.max(0)) / 1000.0);
        if a.error_class == Some(ErrorClass::RateLimited) {
            self.teacher_rate_limited.get_or_create(&vec![("endpoint", ep())]).inc();
        }
        if a.error_class.is_none() {
            let tokens = |dir: &str, n: i32| {
                self.teacher_tokens
                    .get_or_create(&vec![("endpoint", ep()), ("direction", dir.to_string())])
                    .inc_by(u64::try_from(n).unwrap_or(0));
            };
            tokens("input", a.input_tokens);
            tokens("output", a.output_tokens);
            self.teacher_cost.get_or_create(&vec![("endpoint", ep())]).inc_by(a.cost_usd.max(0.0));
        }
    }

    pub fn retry(&self, endpoint: &str) {
        self.teacher_retries.get_or_create(&vec![("endpoint", endpoint.to_string())]).inc();
    }

    pub fn limit_wait(&self, endpoint: &str, secs: f64) {
        if secs > 0.0 {
            self.rate_limit_wait.get_or_create(&vec![("endpoint", endpoint.to_string())]).inc_by(secs);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_documented_names() {
        let m = metrics();
        m.task("reasoning", "completed");
        m.retry("mock");
        m.commit_batch.observe(3.0);
        m.attempt(&AttemptRecord {
            id: uuid::Uuid::nil(),
            endpoint: "mock".into(),
            model: "m".into(),
            started_at: chrono::Utc::now(),
            duration_ms: 30,
            http_status: Some(429),
            error_class: Some(ErrorClass::RateLimited),
            error: None,
            input_tokens: 0,
            output_tokens: 0,
            cost_usd: 0.0,
        });
        let text = render();
        for name in [
            "reasonrec_tasks_total{stage=\"reasoning\",outcome=\"completed\"}",
            "reasonrec_teacher_retries_total{endpoint=\"mock\"}",
            "reasonrec_db_commit_batch_size_bucket",
            "reasonrec_build_info{version=",
            "reasonrec_teacher_request_duration_seconds_bucket{le=\"0.05\",endpoint=\"mock\",outcome=\"rate_limited\"} 1",
            "reasonrec_teacher_rate_limited_total{endpoint=\"mock\"} 1",
        ] {
            assert!(text.contains(name), "{name} missing from:\n{text}");
        }
    }
}
