//! The load generator: latencies in HDR histograms, closed-loop workers for a fixed time, and
//! bounded-concurrency batches of one-off requests.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::sync::Semaphore;

/// Latencies in microseconds, from 1 µs to 2 minutes, 3 significant digits.
#[derive(Debug, Clone)]
pub struct Latencies {
    histogram: Histogram<u64>,
}

const HIGHEST_MICROS: u64 = 120_000_000;

impl Default for Latencies {
    fn default() -> Self {
        Self::new()
    }
}

impl Latencies {
    pub fn new() -> Self {
        // Constant bounds that hdrhistogram accepts (low >= 1, high >= 2 * low, sigfig <= 5).
        #[allow(
            clippy::expect_used,
            reason = "the bounds are constants known to be valid"
        )]
        let histogram = Histogram::new_with_bounds(1, HIGHEST_MICROS, 3)
            .expect("constant histogram bounds are valid");
        Self { histogram }
    }

    pub fn record(&mut self, elapsed: Duration) {
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.histogram.saturating_record(micros.max(1));
    }

    pub fn merge(&mut self, other: &Latencies) {
        // Same bounds on both sides, so adding cannot fail; a failure would only lose samples.
        let _ = self.histogram.add(&other.histogram);
    }

    pub fn count(&self) -> u64 {
        self.histogram.len()
    }

    pub fn summary(&self) -> LatencySummary {
        let ms = |micros: u64| micros as f64 / 1000.0;
        let at = |q: f64| ms(self.histogram.value_at_quantile(q));
        if self.histogram.is_empty() {
            return LatencySummary::default();
        }
        LatencySummary {
            count: self.histogram.len(),
            mean_ms: self.histogram.mean() / 1000.0,
            p50_ms: at(0.50),
            p90_ms: at(0.90),
            p95_ms: at(0.95),
            p99_ms: at(0.99),
            p999_ms: at(0.999),
            max_ms: ms(self.histogram.max()),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct LatencySummary {
    pub count: u64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

/// What one request ended with: an HTTP status, or a transport error.
pub type Outcome = Result<u16, String>;

/// A fixed-concurrency, fixed-duration run.
#[derive(Debug, Clone, Serialize, Default)]
pub struct LoadResult {
    pub concurrency: usize,
    pub seconds: f64,
    pub requests: u64,
    /// Transport errors and answers that are not 2xx.
    pub errors: u64,
    pub throughput_rps: f64,
    pub latency: LatencySummary,
    /// Answers by status (`"200"`, `"502"`, `"error"` for transport errors).
    pub statuses: BTreeMap<String, u64>,
    /// A few of the transport errors, to tell what went wrong.
    pub error_samples: Vec<String>,
}

#[derive(Default)]
struct WorkerTally {
    latencies: Latencies,
    statuses: BTreeMap<String, u64>,
    errors: u64,
    error_samples: Vec<String>,
}

impl WorkerTally {
    fn add(&mut self, outcome: Outcome, elapsed: Duration) {
        self.latencies.record(elapsed);
        let key = match outcome {
            Ok(status) => {
                if !(200..300).contains(&status) {
                    self.errors += 1;
                }
                status.to_string()
            }
            Err(message) => {
                self.errors += 1;
                if self.error_samples.len() < 3 {
                    self.error_samples.push(message);
                }
                "error".to_owned()
            }
        };
        *self.statuses.entry(key).or_default() += 1;
    }
}

/// `concurrency` workers each send a request, wait for its answer and send the next, until
/// `duration` has passed (closed loop). `request(worker, iteration)` makes one request.
pub async fn closed_loop<F, Fut>(concurrency: usize, duration: Duration, request: F) -> LoadResult
where
    F: Fn(usize, u64) -> Fut + Send + Sync + Clone + 'static,
    Fut: Future<Output = Outcome> + Send + 'static,
{
    let started = Instant::now();
    let deadline = started + duration;
    let workers: Vec<_> = (0..concurrency)
        .map(|worker| {
            let request = request.clone();
            tokio::spawn(async move {
                let mut tally = WorkerTally::default();
                let mut iteration = 0;
                while Instant::now() < deadline {
                    let sent = Instant::now();
                    let outcome = request(worker, iteration).await;
                    tally.add(outcome, sent.elapsed());
                    iteration += 1;
                }
                tally
            })
        })
        .collect();
    let mut total = WorkerTally::default();
    for worker in workers {
        match worker.await {
            Ok(tally) => {
                total.latencies.merge(&tally.latencies);
                total.errors += tally.errors;
                for (status, n) in tally.statuses {
                    *total.statuses.entry(status).or_default() += n;
                }
                for sample in tally.error_samples {
                    if total.error_samples.len() < 5 {
                        total.error_samples.push(sample);
                    }
                }
            }
            Err(err) => {
                total.errors += 1;
                total
                    .error_samples
                    .push(format!("worker task failed: {err}"));
            }
        }
    }
    // Until the last in-flight request answered, so that every counted request fits the window.
    let seconds = started.elapsed().as_secs_f64();
    let requests = total.latencies.count();
    LoadResult {
        concurrency,
        seconds,
        requests,
        errors: total.errors,
        throughput_rps: requests as f64 / seconds,
        latency: total.latencies.summary(),
        statuses: total.statuses,
        error_samples: total.error_samples,
    }
}

/// Runs `work` on every item, at most `concurrency` at a time, each in its own task; results in
/// the order of `items`.
pub async fn run_all<T, R, F, Fut>(
    items: Vec<T>,
    concurrency: usize,
    work: F,
) -> anyhow::Result<Vec<R>>
where
    T: Send + 'static,
    R: Send + 'static,
    F: Fn(T) -> Fut + Send + Sync + Clone + 'static,
    Fut: Future<Output = R> + Send + 'static,
{
    let permits = Arc::new(Semaphore::new(concurrency.max(1)));
    let tasks: Vec<_> = items
        .into_iter()
        .map(|item| {
            let (permits, work) = (permits.clone(), work.clone());
            tokio::spawn(async move {
                // The semaphore is never closed, so acquiring only waits.
                let _permit = permits.acquire_owned().await.ok();
                work(item).await
            })
        })
        .collect();
    let mut results = Vec::with_capacity(tasks.len());
    for task in tasks {
        results.push(task.await.context("a benchmark task failed")?);
    }
    Ok(results)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_come_from_the_recorded_latencies() {
        let mut latencies = Latencies::new();
        for ms in 1..=100 {
            latencies.record(Duration::from_millis(ms));
        }
        let summary = latencies.summary();
        assert_eq!(summary.count, 100);
        assert!((summary.p50_ms - 50.0).abs() < 0.1, "{summary:?}");
        assert!((summary.p99_ms - 99.0).abs() < 0.1, "{summary:?}");
        assert!((summary.max_ms - 100.0).abs() < 0.1, "{summary:?}");
    }

    #[test]
    fn merged_histograms_count_both_sides() {
        let (mut a, mut b) = (Latencies::new(), Latencies::new());
        a.record(Duration::from_millis(1));
        b.record(Duration::from_millis(3));
        a.merge(&b);
        assert_eq!(a.count(), 2);
        assert!((a.summary().max_ms - 3.0).abs() < 0.01);
    }

    #[test]
    fn an_empty_histogram_summarises_to_zeroes() {
        assert_eq!(Latencies::new().summary(), LatencySummary::default());
    }

    #[tokio::test]
    async fn a_closed_loop_counts_failures_and_keeps_going_until_the_deadline() {
        let result = closed_loop(4, Duration::from_millis(100), |worker, _| async move {
            tokio::time::sleep(Duration::from_millis(5)).await;
            match worker {
                0 => Ok(500),
                1 => Err("refused".to_owned()),
                _ => Ok(200),
            }
        })
        .await;
        assert!(result.requests >= 20, "{result:?}");
        assert_eq!(
            result.errors,
            result.statuses["500"] + result.statuses["error"]
        );
        assert!(result.statuses["200"] > 0);
        assert_eq!(
            result.error_samples.first().map(String::as_str),
            Some("refused")
        );
    }

    #[tokio::test]
    async fn run_all_keeps_the_order_and_the_bound() {
        let running = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let peak = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let results = run_all((0..20).collect(), 3, {
            let (running, peak) = (running.clone(), peak.clone());
            move |i: u32| {
                let (running, peak) = (running.clone(), peak.clone());
                async move {
                    let now = running.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                    peak.fetch_max(now, std::sync::atomic::Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    running.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                    i * 2
                }
            }
        })
        .await
        .expect("tasks run");
        assert_eq!(results, (0..20).map(|i| i * 2).collect::<Vec<_>>());
        assert!(peak.load(std::sync::atomic::Ordering::SeqCst) <= 3);
    }
}
