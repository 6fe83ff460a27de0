//! The report's SVG charts: (file name, SVG document), in the order the report shows them.

use super::svg::{self, BarChart, LineChart, Series};
use super::{
    IDLE_GOAL_MIB, PROPAGATION_GOAL_MS, READY_GOAL_MS, Results, cpu_phases, levels_of, rss_of,
};
use crate::browse::{BrowseLevel, Endpoint};
use crate::load::LatencySummary;
use crate::monitor::Resident;

pub fn charts(r: &Results) -> Vec<(&'static str, String)> {
    let (throughput, latency) = browse_charts(r);
    let mut charts = vec![
        ("browse-throughput.svg", throughput),
        ("browse-latency.svg", latency),
    ];
    charts.extend(super::history::charts(r));
    charts.extend([
        ("flash-sale.svg", flash_sale_chart(r)),
        ("propagation.svg", propagation_chart(r)),
        ("memory.svg", memory_chart(r)),
        ("startup.svg", startup_chart(r)),
        ("cpu.svg", cpu_chart(r)),
    ]);
    charts
}

/// Throughput, then latency, by concurrency. The concurrency levels are evenly spaced on the x
/// axis whatever their values (1, 16, 64… would crowd the left otherwise).
fn browse_charts(r: &Results) -> (String, String) {
    let mut levels: Vec<usize> = r
        .browse
        .levels
        .iter()
        .map(|l| l.result.concurrency)
        .collect();
    levels.sort_unstable();
    levels.dedup();
    let x_of = |c: usize| levels.iter().position(|&l| l == c).unwrap_or(0) as f64;
    let x_ticks: Vec<(f64, String)> = levels
        .iter()
        .enumerate()
        .map(|(i, c)| (i as f64, c.to_string()))
        .collect();
    let series_of = |endpoint: Endpoint, value: fn(&BrowseLevel) -> f64, name: String| Series {
        name,
        points: levels_of(&r.browse, endpoint)
            .map(|l| (x_of(l.result.concurrency), value(l)))
            .collect(),
    };
    let throughput = svg::line_chart(&LineChart {
        title: "Browse: throughput by concurrency",
        x_label: "concurrent clients",
        y_label: "requests per second",
        series: [Endpoint::List, Endpoint::Show]
            .into_iter()
            .map(|e| series_of(e, |l| l.result.throughput_rps, e.label().to_owned()))
            .collect(),
        x_ticks: x_ticks.clone(),
        reference: None,
    });
    let mut latency_series = Vec::new();
    for endpoint in [Endpoint::List, Endpoint::Show] {
        latency_series.push(series_of(
            endpoint,
            |l| l.result.latency.p50_ms,
            format!("{} p50", endpoint.label()),
        ));
        latency_series.push(series_of(
            endpoint,
            |l| l.result.latency.p99_ms,
            format!("{} p99", endpoint.label()),
        ));
    }
    let latency = svg::line_chart(&LineChart {
        title: "Browse: latency by concurrency",
        x_label: "concurrent clients",
        y_label: "milliseconds",
        series: latency_series,
        x_ticks,
        reference: None,
    });
    (throughput, latency)
}

fn flash_sale_chart(r: &Results) -> String {
    let mut timeline = vec![(0.0, 0.0)];
    timeline.extend(
        r.flash_sale
            .sold_timeline
            .iter()
            .map(|(ms, n)| (*ms, *n as f64)),
    );
    svg::line_chart(&LineChart {
        title: "Flash sale: tickets sold over time",
        x_label: "milliseconds since the first request",
        y_label: "orders created (201)",
        series: vec![Series {
            name: format!(
                "{} users, {} tickets",
                r.flash_sale.users, r.flash_sale.tickets
            ),
            points: timeline,
        }],
        x_ticks: Vec::new(),
        reference: Some((r.flash_sale.tickets as f64, "all tickets".into())),
    })
}

/// Reads one percentile out of a summary.
type Quantile = fn(&LatencySummary) -> f64;

fn propagation_chart(r: &Results) -> String {
    let quantiles: [(&str, Quantile); 6] = [
        ("p50", |l| l.p50_ms),
        ("p90", |l| l.p90_ms),
        ("p95", |l| l.p95_ms),
        ("p99", |l| l.p99_ms),
        ("p99.9", |l| l.p999_ms),
        ("max", |l| l.max_ms),
    ];
    let curve = |name: &str, l: &LatencySummary| Series {
        name: name.to_owned(),
        points: quantiles
            .iter()
            .enumerate()
            .map(|(i, (_, f))| (i as f64, f(l)))
            .collect(),
    };
    svg::line_chart(&LineChart {
        title: "Event propagation latency by percentile",
        x_label: "percentile",
        y_label: "milliseconds",
        series: vec![
            curve("order → ticket reserved", &r.flash_sale.reservation.latency),
            curve("payment → order complete", &r.payments.completion.latency),
        ],
        x_ticks: quantiles
            .iter()
            .enumerate()
            .map(|(i, (n, _))| (i as f64, (*n).to_owned()))
            .collect(),
        reference: Some((PROPAGATION_GOAL_MS, "goal: p99 < 100 ms".into())),
    })
}

fn memory_chart(r: &Results) -> String {
    let services: Vec<&Resident> = r.idle.iter().filter(|i| i.service).collect();
    svg::bar_chart(&BarChart {
        title: "Resident memory of each service",
        y_label: "MiB",
        categories: services.iter().map(|s| s.name.clone()).collect(),
        series: vec![
            ("idle".into(), services.iter().map(|s| s.rss_mib).collect()),
            (
                "peak (VmHWM)".into(),
                services
                    .iter()
                    .map(|s| rss_of(&r.peak_since_start, &s.name))
                    .collect(),
            ),
        ],
        reference: Some((IDLE_GOAL_MIB, "idle goal: 20 MB".into())),
    })
}

fn startup_chart(r: &Results) -> String {
    svg::bar_chart(&BarChart {
        title: "Start to ready (GET /readyz = 200)",
        y_label: "milliseconds",
        categories: r.startup.iter().map(|s| s.service.clone()).collect(),
        series: vec![
            (
                "median".into(),
                r.startup.iter().map(|s| s.median_ready_ms).collect(),
            ),
            (
                "worst".into(),
                r.startup.iter().map(|s| s.max_ready_ms).collect(),
            ),
        ],
        reference: Some((READY_GOAL_MS, "goal: 200 ms".into())),
    })
}

/// One group of bars per process (those of the first phase), one bar per phase.
fn cpu_chart(r: &Results) -> String {
    let phases = cpu_phases(r);
    let names: Vec<String> = phases
        .first()
        .map(|p| p.processes.iter().map(|p| p.name.clone()).collect())
        .unwrap_or_default();
    let cpu_of = |processes: &[crate::monitor::ProcessUsage], name: &str| {
        processes
            .iter()
            .find(|p| p.name == name)
            .map_or(0.0, |p| p.cpu_percent)
    };
    svg::bar_chart(&BarChart {
        title: "CPU by process and phase (100% = one core)",
        y_label: "% of one core",
        categories: names.clone(),
        series: phases
            .iter()
            .map(|phase| {
                (
                    phase.phase.clone(),
                    names.iter().map(|n| cpu_of(&phase.processes, n)).collect(),
                )
            })
            .collect(),
        reference: None,
    })
}
