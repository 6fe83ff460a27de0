use super::*;
use crate::auth::{Argon2Figures, AuthRun};
use crate::browse::BrowseLevel;
use crate::ferretdb::PhaseCommands;
use crate::flash_sale::Propagation;
use crate::history::{History, HistoryRun, HistorySize, Workload};
use crate::load::LoadResult;
use crate::monitor::ProcessUsage;
use crate::profile::{ProcessProfile, Share};
use crate::startup::StartupRun;

fn resident(name: &str, service: bool, rss_mib: f64) -> Resident {
    Resident {
        name: name.into(),
        service,
        rss_mib,
    }
}

fn usage(phase: &str) -> PhaseUsage {
    PhaseUsage {
        phase: phase.into(),
        wall_seconds: 2.0,
        processes: vec![
            ProcessUsage {
                name: "orders".into(),
                service: true,
                cpu_seconds: 0.5,
                cpu_percent: 25.0,
                peak_rss_mib: 14.0,
            },
            ProcessUsage {
                name: "ferretdb".into(),
                service: false,
                cpu_seconds: 3.0,
                cpu_percent: 150.0,
                peak_rss_mib: 900.0,
            },
        ],
        machine_cpu_percent: 180.0,
        other_programs_cpu_percent: 5.0,
        database_commands: Some(PhaseCommands::of(
            [
                ("find", 1_606),
                ("insert", 1_000),
                ("update", 200),
                ("delete", 200),
            ]
            .into_iter()
            .map(|(command, n)| (command.to_owned(), n + phase.len() as u64))
            .collect(),
        )),
    }
}

fn latency(p99_ms: f64) -> LatencySummary {
    LatencySummary {
        count: 100,
        mean_ms: p99_ms / 3.0,
        p50_ms: p99_ms / 4.0,
        p90_ms: p99_ms / 2.0,
        p95_ms: p99_ms / 1.5,
        p99_ms,
        p999_ms: p99_ms,
        max_ms: p99_ms * 1.2,
    }
}

fn level(endpoint: Endpoint, concurrency: usize) -> BrowseLevel {
    BrowseLevel {
        endpoint,
        result: LoadResult {
            concurrency,
            seconds: 4.0,
            requests: 400,
            throughput_rps: 100.0 * concurrency as f64,
            latency: latency(10.0),
            ..LoadResult::default()
        },
        usage: usage(&format!("browse {} c={concurrency}", endpoint.label())),
    }
}

fn service_startup(service: &str, ready: f64) -> ServiceStartup {
    ServiceStartup {
        service: service.into(),
        runs: vec![StartupRun {
            ready_ms: ready,
            rss_at_ready_mib: 9.0,
            rss_settled_mib: 9.5,
            stop_ms: 4.0,
        }],
        median_ready_ms: ready,
        max_ready_ms: ready,
        median_rss_settled_mib: 9.5,
    }
}

/// A sale that sold each ticket once.
fn sale() -> FlashSale {
    FlashSale {
        users: 1000,
        tickets: 100,
        contenders_per_ticket: 10,
        in_flight: 256,
        sold: 100,
        refused: 900,
        oversold: 0,
        live_orders_in_database: 100,
        orders_in_database: 100,
        tickets_showing_their_order: 100,
        sold_timeline: vec![(10.0, 1), (20.0, 2)],
        order_latency: latency(300.0),
        reservation: Propagation {
            expected: 100,
            observed: 100,
            latency: latency(40.0),
            ..Propagation::default()
        },
        usage: usage("flash sale"),
        passed: true,
        sold_out_ms: 1234.5,
        ..FlashSale::default()
    }
}

/// Every winner paid and its order completed.
fn payments() -> Payments {
    Payments {
        orders: 100,
        paid: 100,
        completion: Propagation {
            expected: 100,
            observed: 100,
            latency: latency(45.0),
            ..Propagation::default()
        },
        completed_in_database: 100,
        usage: usage("payments"),
        ..Payments::default()
    }
}

fn browse() -> Browse {
    Browse {
        list_length: 100,
        list_bytes: 14000,
        seconds_per_level: 4.0,
        levels: vec![
            level(Endpoint::List, 1),
            level(Endpoint::List, 16),
            level(Endpoint::Show, 1),
            level(Endpoint::Show, 16),
        ],
    }
}

fn auth() -> Auth {
    Auth {
        signup: AuthRun {
            operation: "signup".into(),
            usage: usage("auth signup"),
            ..AuthRun::default()
        },
        signin: AuthRun {
            operation: "signin".into(),
            usage: usage("auth signin"),
            ..AuthRun::default()
        },
        ..Auth::default()
    }
}

fn profile() -> Profile {
    Profile {
        phase: "flash-sale".into(),
        processes: vec![ProcessProfile {
            name: "ferretdb".into(),
            samples: 10,
            by_object: vec![Share {
                percent: 90.0,
                what: "ferretdb".into(),
            }],
            top_symbols: vec![Share {
                percent: 12.0,
                what: "ferretdb [.] encoding/json.(*decodeState).object".into(),
            }],
            data_file: "x".into(),
        }],
    }
}

fn fixture() -> Results {
    let sale = sale();
    let payments = payments();
    let idle = vec![
        resident("auth", true, 10.0),
        resident("orders", true, 14.0),
        resident("ferretdb", false, 900.0),
    ];
    let startup = vec![
        service_startup("auth", 50.0),
        service_startup("orders", 30.0),
    ];
    let goals = goals(&idle, &startup, &sale, &payments);
    Results {
        run: "test".into(),
        idle,
        idle_usage: usage("idle"),
        database_at_start: vec![CollectionSize {
            database: "orders".into(),
            collection: "orders".into(),
            documents: 10,
        }],
        startup,
        browse: browse(),
        auth: auth(),
        flash_sale: sale,
        payments,
        peak_since_start: vec![resident("auth", true, 300.0)],
        profiles: vec![profile()],
        goals,
        ..Results::default()
    }
}

fn machine() -> Machine {
    Machine {
        cpu_model: "Example CPU @ 3.00GHz".into(),
        logical_cpus: 2,
        memory_gib: 7.6,
        kernel: "6.1.0".into(),
        load_average_at_start: "0.52 0.40 0.31".into(),
        git_commit: "5ad866f".into(),
        git_dirty: true,
        started_at: "2026-12-02T09:47:17Z".into(),
    }
}

fn settings() -> Settings {
    Settings {
        base_url: "http://127.0.0.1:8080".into(),
        users: 1000,
        tickets: 100,
        signin_users: 200,
        auth_concurrency: 8,
        sale_in_flight: 256,
        browse_levels: vec![1, 16],
        browse_seconds: 4.0,
        history_sizes: vec![0, 1_000, 10_000],
        history_levels: vec![64],
        history_seconds: 4.0,
        db_backend: "sqlite".into(),
        startup_runs: 5,
        profile: true,
        replicas: "2".into(),
        build: "release".into(),
    }
}

/// Errors, timeouts and the figures `fixture` leaves at zero.
fn add_sale_details(s: &mut FlashSale) {
    s.errors = 2;
    s.error_samples = vec!["Ok((500, \"boom\"))".into(), "Err(\"timed out\")".into()];
    s.sold_unseen_by_client = 1;
    s.sold_out_ms = 1234.5;
    s.all_answered_ms = 2345.5;
    s.answers_per_second = 426.3;
    s.winning_order_latency = latency(200.0);
    s.reservation.what = "POST /api/orders 201 → ticket:updated".into();
    s.reservation.before_the_201 = 3;
    s.reservation.from_request_sent = latency(90.0);
    s.reservation.from_event = Some(latency(12.0));
}

fn add_payment_details(p: &mut Payments) {
    p.errors = 1;
    p.error_samples = vec!["POST /api/payments: 500 {}".into()];
    p.retried_not_found = 4;
    p.retried_conflict = 2;
    p.payment_latency = latency(80.0);
    p.completion.what = "POST /api/payments 201 → complete".into();
    p.completion.from_request_sent = latency(150.0);
    p.poll_every_ms = 10.0;
    p.polls = 321;
}

fn add_auth_details(a: &mut Auth) {
    a.argon2 = Argon2Figures {
        algorithm: "argon2id".into(),
        version: 19,
        memory_kib: 19456,
        iterations: 2,
        lanes: 1,
        single_hash_ms: 23.4,
        parallel_hashes_per_second: 81.2,
        threads: 2,
    };
    for (run, users, per_second) in [(&mut a.signup, 1000, 40.5), (&mut a.signin, 200, 41.25)] {
        run.users = users;
        run.concurrency = 8;
        run.seconds = 24.0;
        run.throughput_per_second = per_second;
        run.failures = 1;
        run.latency = latency(250.0);
    }
}

/// A process without samples (left out) and a second profile with more objects than are shown.
fn add_profiles(profiles: &mut Vec<Profile>) {
    profiles[0].processes.push(ProcessProfile {
        name: "nats".into(),
        samples: 0,
        by_object: Vec::new(),
        top_symbols: Vec::new(),
        data_file: "y".into(),
    });
    profiles.push(Profile {
        phase: "browse".into(),
        processes: vec![ProcessProfile {
            name: "tickets".into(),
            samples: 7,
            by_object: (0..7)
                .map(|i| Share {
                    percent: 40.0 - f64::from(i) * 5.0,
                    what: format!("object{i}"),
                })
                .collect(),
            top_symbols: vec![
                Share {
                    percent: 20.5,
                    what: "tickets [.] memcpy".into(),
                },
                Share {
                    percent: 3.25,
                    what: "[kernel] [k] clear_page".into(),
                },
            ],
            data_file: "z".into(),
        }],
    });
}

/// A run with every figure set, including the optional ones (error samples, a service without
/// startup figures, a process without samples, a second profile), so that every section of the
/// report has content for the golden files to pin down.
fn full_fixture() -> Results {
    let mut r = fixture();
    r.run = "20261202T094717Z".into();
    r.machine = machine();
    r.settings = settings();
    r.seed = SeedFigures {
        tickets: 100,
        create_ticket_latency: latency(24.0),
        replica_ms: 37.5,
    };
    // A service the startup phase did not measure: its cells read "–".
    r.idle.push(resident("tickets", true, 12.25));
    r.startup[0].runs.push(StartupRun {
        ready_ms: 44.0,
        rss_at_ready_mib: 8.5,
        rss_settled_mib: 9.25,
        stop_ms: 7.0,
    });
    r.after_the_run = vec![
        resident("auth", true, 16.5),
        resident("orders", true, 18.0),
        resident("ferretdb", false, 1200.0),
    ];
    r.peak_sampled = vec![
        resident("auth", true, 280.0),
        resident("orders", true, 22.0),
        resident("tickets", true, 15.5),
    ];
    r.peak_since_start.push(resident("orders", true, 24.0));
    r.peak_since_start.push(resident("ferretdb", false, 1500.0));
    r.database_at_start.push(CollectionSize {
        database: "tickets".into(),
        collection: "outbox".into(),
        documents: 0,
    });
    r.database_at_end = vec![CollectionSize {
        database: "orders".into(),
        collection: "orders".into(),
        documents: 110,
    }];
    add_sale_details(&mut r.flash_sale);
    add_payment_details(&mut r.payments);
    add_auth_details(&mut r.auth);
    add_profiles(&mut r.profiles);
    r.history = history();
    r.duration_seconds = 321.5;
    r
}

/// Three sizes at 64 clients; the listing slows down with history, the ceiling does not, and the
/// largest size misses a workload (its cells read "–").
fn history() -> History {
    let run = |workload: Workload, rps: f64, p99_ms: f64, errors: u64| HistoryRun {
        workload,
        result: LoadResult {
            concurrency: 64,
            seconds: 4.0,
            requests: (rps * 4.0) as u64,
            errors,
            throughput_rps: rps,
            latency: latency(p99_ms),
            ..LoadResult::default()
        },
        usage: usage(&format!("history {}", workload.label())),
    };
    let size = |sold: usize, list: f64, runs: Vec<HistoryRun>| HistorySize {
        sold,
        documents_inserted: sold as u64 * 17,
        seed_seconds: sold as f64 / 2000.0,
        documents: 140 + sold as u64 * 17,
        runs: [
            vec![
                run(Workload::List, list, 6400.0 / list, 0),
                run(Workload::Show, 2000.0, 40.0, 0),
            ],
            runs,
        ]
        .concat(),
    };
    History {
        levels: vec![64],
        seconds_per_level: 4.0,
        documents_per_sale: [
            ("auth.users", 1),
            ("tickets.tickets", 1),
            ("orders.orders", 1),
        ]
        .map(|(k, v)| (k.to_owned(), v))
        .into(),
        free_tickets: 100,
        user_orders: 3,
        sizes: vec![
            size(
                0,
                400.0,
                vec![
                    run(Workload::Orders, 900.0, 90.0, 0),
                    run(Workload::Signin, 70.0, 1200.0, 0),
                    run(Workload::Ceiling, 4000.0, 30.0, 0),
                ],
            ),
            size(
                1_000,
                200.0,
                vec![
                    run(Workload::Orders, 800.0, 100.0, 0),
                    run(Workload::Signin, 68.0, 1250.0, 0),
                    run(Workload::Ceiling, 4100.0, 29.0, 0),
                ],
            ),
            size(
                10_000,
                25.0,
                vec![
                    run(Workload::Orders, 300.0, 300.0, 12),
                    run(Workload::Ceiling, 3900.0, 31.0, 0),
                ],
            ),
        ],
    }
}

const GOLDEN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden");

fn sorted_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Writes `results` as a run does and compares every file with `bench/tests/golden/<case>/`.
/// `BENCH_BLESS=1 cargo test -p bench golden` rewrites the golden files (only when the report
/// is meant to change).
fn assert_same_as_golden(case: &str, results: &Results) {
    let written = std::env::temp_dir().join(format!("bench-golden-{case}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&written);
    write(&written, results).unwrap();
    let golden = Path::new(GOLDEN).join(case);
    if std::env::var_os("BENCH_BLESS").is_some() {
        let _ = std::fs::remove_dir_all(&golden);
        std::fs::create_dir_all(&golden).unwrap();
        for name in sorted_names(&written) {
            std::fs::copy(written.join(&name), golden.join(&name)).unwrap();
        }
    }
    let names = sorted_names(&written);
    assert_eq!(names, sorted_names(&golden), "the files of {case}");
    for name in names {
        let actual = std::fs::read_to_string(written.join(&name)).unwrap();
        let expected = std::fs::read_to_string(golden.join(&name)).unwrap();
        // The first differing line, rather than two whole files.
        if let Some((n, (a, e))) = actual
            .lines()
            .zip(expected.lines())
            .enumerate()
            .find(|(_, (a, e))| a != e)
        {
            panic!(
                "{case}/{name} line {}:\n  now:    {a}\n  golden: {e}",
                n + 1
            );
        }
        assert!(
            actual == expected,
            "{case}/{name} differs in length or line endings"
        );
    }
    let _ = std::fs::remove_dir_all(&written);
}

#[test]
fn a_full_report_is_byte_for_byte_the_golden_one() {
    assert_same_as_golden("full", &full_fixture());
}

#[test]
fn an_empty_report_is_byte_for_byte_the_golden_one() {
    assert_same_as_golden("empty", &Results::default());
}

/// Every row of every Markdown table has as many cells as its header.
fn assert_tables_are_rectangular(md: &str) {
    let mut header: Option<usize> = None;
    for line in md.lines() {
        if !line.starts_with('|') {
            header = None;
            continue;
        }
        // Cells are separated by `|` outside backticks (code spans may hold `|`).
        let mut cells = 0;
        let mut code = false;
        for c in line.chars() {
            match c {
                '`' => code = !code,
                '|' if !code => cells += 1,
                _ => {}
            }
        }
        match header {
            None => header = Some(cells),
            Some(expected) => assert_eq!(cells, expected, "row {line:?}"),
        }
    }
}

#[test]
fn the_report_and_the_summary_have_rectangular_tables() {
    let results = fixture();
    let md = markdown(&results);
    assert_tables_are_rectangular(&md);
    assert_tables_are_rectangular(&summary(&results));
    assert!(md.contains("## 1. Browse") && md.contains("## Profiles"));
    assert!(md.contains("encoding/json"));
    let full = full_fixture();
    assert_tables_are_rectangular(&markdown(&full));
    assert_tables_are_rectangular(&summary(&full));
}

#[test]
fn the_tickets_services_own_handling_time_is_reported_only_when_measured() {
    let full = full_fixture();
    assert!(summary(&full).contains("; from `order:created` on NATS: p50 "));
    assert!(
        markdown(&full).contains("From `order:created` to `ticket:updated`, both seen on NATS")
    );
    let plain = fixture();
    assert!(!summary(&plain).contains("on NATS: p50"));
    assert!(!markdown(&plain).contains("From `order:created` to `ticket:updated`"));
}

#[test]
fn goals_are_met_only_within_their_limits() {
    let met = fixture().goals;
    assert!(met.iter().all(|g| g.met), "{met:?}");

    let mut results = fixture();
    // 19.5 MiB is more than 20 MB.
    results.idle[0].rss_mib = 19.5;
    results.startup[1].max_ready_ms = 200.0;
    results.flash_sale.passed = false;
    results.payments.completion.latency.p99_ms = 100.0;
    results.payments.money_violations = vec!["order o1 is cancelled and kept its charge".into()];
    let goals = goals(
        &results.idle,
        &results.startup,
        &results.flash_sale,
        &results.payments,
    );
    assert!(goals.iter().all(|g| !g.met), "{goals:?}");
}

#[test]
fn issue_13s_sale_goals_fail_at_their_limits_and_leave_the_others_met() {
    let mut results = fixture();
    results.flash_sale.sold_out_ms = 1_500.0;
    results.flash_sale.reservation.latency.p99_ms = 50.0;
    let goals = goals(
        &results.idle,
        &results.startup,
        &results.flash_sale,
        &results.payments,
    );
    let failed: Vec<&str> = goals
        .iter()
        .filter(|g| !g.met)
        .map(|g| g.goal.as_str())
        .collect();
    assert_eq!(
        failed,
        [
            "Flash sale sold out in under 1.5 s, 0 errors (issue 13)",
            "Order → reserved and payment → complete p99 under 50 ms (issue 13)"
        ]
    );
}

#[test]
fn every_chart_is_an_svg_document() {
    let charts = charts(&fixture());
    assert_eq!(charts.len(), 7);
    for (name, svg) in charts {
        assert!(name.ends_with(".svg"));
        assert!(
            svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"),
            "{name}"
        );
    }
}
