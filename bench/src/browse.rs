//! Browsing: `GET /api/tickets` (the list of free tickets) and `GET /api/tickets/{id}` at rising
//! concurrency, each level a closed loop for a fixed time after a short unrecorded warm-up.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::api::Api;
use crate::load::{LoadResult, closed_loop};
use crate::monitor::{Monitor, PhaseUsage};
use crate::profile::Profiler;

const WARM_UP: Duration = Duration::from_millis(300);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
pub enum Endpoint {
    #[default]
    #[serde(rename = "GET /api/tickets")]
    List,
    #[serde(rename = "GET /api/tickets/{id}")]
    Show,
}

impl Endpoint {
    pub fn label(self) -> &'static str {
        match self {
            Endpoint::List => "GET /api/tickets",
            Endpoint::Show => "GET /api/tickets/{id}",
        }
    }

    fn slug(self) -> &'static str {
        match self {
            Endpoint::List => "list",
            Endpoint::Show => "show",
        }
    }
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct BrowseLevel {
    pub endpoint: Endpoint,
    pub result: LoadResult,
    pub usage: PhaseUsage,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct Browse {
    /// How many tickets `GET /api/tickets` returned (every unreserved ticket in the database).
    pub list_length: usize,
    pub list_bytes: usize,
    pub seconds_per_level: f64,
    pub levels: Vec<BrowseLevel>,
}

pub struct BrowseOptions<'a> {
    pub levels: &'a [usize],
    pub duration: Duration,
    pub profiler: Option<&'a Profiler>,
}

pub async fn run(
    api: &Api,
    monitor: &Monitor,
    ticket_ids: &[String],
    options: &BrowseOptions<'_>,
) -> anyhow::Result<Browse> {
    anyhow::ensure!(!ticket_ids.is_empty(), "no tickets to browse");
    let list = api.get_bytes("/api/tickets").await?;
    let list_length = serde_json::from_slice::<serde_json::Value>(&list)?
        .as_array()
        .map_or(0, Vec::len);
    let paths: Arc<Vec<String>> = Arc::new(
        ticket_ids
            .iter()
            .map(|id| format!("/api/tickets/{id}"))
            .collect(),
    );
    let mut levels = Vec::new();
    let top = options.levels.iter().copied().max().unwrap_or(0);
    for endpoint in [Endpoint::List, Endpoint::Show] {
        for &concurrency in options.levels {
            let request = {
                let (api, paths) = (api.clone(), paths.clone());
                move |worker: usize, iteration: u64| {
                    let (api, paths) = (api.clone(), paths.clone());
                    async move {
                        match endpoint {
                            Endpoint::List => api.get_status("/api/tickets").await,
                            Endpoint::Show => {
                                // Workers spread over the tickets, each walking through them.
                                let i = (worker * 7919 + iteration as usize) % paths.len();
                                api.get_status(&paths[i]).await
                            }
                        }
                    }
                }
            };
            closed_loop(concurrency, WARM_UP, request.clone()).await;
            let label = format!("browse {} c={concurrency}", endpoint.label());
            eprintln!("==> {label} for {:?}", options.duration);
            let profiling = match options.profiler {
                Some(profiler) if concurrency == top => Some(
                    profiler
                        .start(&format!("browse-{}", endpoint.slug()))
                        .await?,
                ),
                _ => None,
            };
            let mark = monitor.begin(label).await;
            let result = closed_loop(concurrency, options.duration, request).await;
            let usage = monitor.end(mark).await;
            if let (Some(profiler), Some(session)) = (options.profiler, profiling) {
                profiler.stop(session).await?;
            }
            eprintln!(
                "    {:.0} req/s, p50 {:.1} ms, p99 {:.1} ms, {} errors",
                result.throughput_rps, result.latency.p50_ms, result.latency.p99_ms, result.errors
            );
            levels.push(BrowseLevel {
                endpoint,
                result,
                usage,
            });
        }
    }
    Ok(Browse {
        list_length,
        list_bytes: list.len(),
        seconds_per_level: options.duration.as_secs_f64(),
        levels,
    })
}
