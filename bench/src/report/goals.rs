//! The goals the project set itself, each measured against its limit.

use super::{
    FAST_PROPAGATION_GOAL_MS, Goal, IDLE_GOAL_MIB, PROPAGATION_GOAL_MS, READY_GOAL_MS,
    SOLD_OUT_GOAL_MS,
};
use crate::flash_sale::{FlashSale, Payments};
use crate::monitor::Resident;
use crate::startup::ServiceStartup;

pub fn goals(
    idle: &[Resident],
    startup: &[ServiceStartup],
    sale: &FlashSale,
    payments: &Payments,
) -> Vec<Goal> {
    vec![
        sale_goal(sale),
        money_goal(payments),
        idle_goal(idle),
        ready_goal(startup),
        propagation_goal(sale, payments),
        sold_out_goal(sale),
        fast_propagation_goal(sale, payments),
    ]
}

/// Issue 13: the whole sale over quickly, not only correctly.
fn sold_out_goal(sale: &FlashSale) -> Goal {
    Goal {
        goal: format!(
            "Flash sale sold out in under {:.1} s, 0 errors (issue 13)",
            SOLD_OUT_GOAL_MS / 1000.0
        ),
        measured: format!(
            "sold out in {:.2} s, {} errors",
            sale.sold_out_ms / 1000.0,
            sale.errors
        ),
        met: sale.passed && sale.errors == 0 && sale.sold_out_ms < SOLD_OUT_GOAL_MS,
    }
}

fn sale_goal(sale: &FlashSale) -> Goal {
    Goal {
        goal: "Flash sale: 0 oversold tickets, every time".into(),
        measured: format!(
            "{} oversold: {} live orders for {} tickets in the database ({} cancelled, {} tickets with two), {} users saw 201, no ticket twice ({} second 201s); {} 201s lost to timeouts",
            sale.oversold + sale.tickets_with_several_live_orders,
            sale.live_orders_in_database,
            sale.tickets,
            sale.cancelled_orders_in_database,
            sale.tickets_with_several_live_orders,
            sale.sold,
            sale.oversold,
            sale.sold_unseen_by_client
        ),
        met: sale.passed,
    }
}

fn money_goal(payments: &Payments) -> Goal {
    Goal {
        goal: "Money: every paid order keeps exactly its one charge, nothing waits for Stripe"
            .into(),
        measured: format!(
            "{} orders paid, {} complete in the database, {} money violations",
            payments.paid,
            payments.completed_in_database,
            payments.money_violations.len()
        ),
        met: payments.money_violations.is_empty()
            && payments.completed_in_database == payments.orders as u64,
    }
}

fn idle_goal(idle: &[Resident]) -> Goal {
    let services: Vec<&Resident> = idle.iter().filter(|r| r.service).collect();
    worst_under(
        "Each Rust service idle under 20 MB resident",
        &services,
        |r| r.rss_mib,
        IDLE_GOAL_MIB,
        "no services",
        |r| {
            format!(
                "highest: {} {:.1} MiB ({:.1} MB)",
                r.name,
                r.rss_mib,
                r.rss_mib * 1.048_576
            )
        },
    )
}

fn ready_goal(startup: &[ServiceStartup]) -> Goal {
    worst_under(
        "Each Rust service ready in under 200 ms after start",
        startup,
        |s| s.max_ready_ms,
        READY_GOAL_MS,
        "not measured",
        |s| {
            format!(
                "slowest: {} {:.0} ms (worst of {} starts)",
                s.service,
                s.max_ready_ms,
                s.runs.len()
            )
        },
    )
}

/// A goal every service must meet: `measure` of each of `services` under `limit`. Measured: the
/// worst one as `describe` tells it, or `none` when there are no services (which fails the goal).
fn worst_under<T>(
    goal: &str,
    services: &[T],
    measure: impl Fn(&T) -> f64,
    limit: f64,
    none: &str,
    describe: impl Fn(&T) -> String,
) -> Goal {
    let worst = services
        .iter()
        .max_by(|a, b| measure(a).total_cmp(&measure(b)));
    Goal {
        goal: goal.into(),
        measured: worst.map_or_else(|| none.into(), describe),
        met: !services.is_empty() && services.iter().all(|s| measure(s) < limit),
    }
}

fn propagation_goal(sale: &FlashSale, payments: &Payments) -> Goal {
    propagation_under(
        "Event propagation p99 under 100 ms at the flash-sale load",
        PROPAGATION_GOAL_MS,
        sale,
        payments,
    )
}

/// Issue 13's tighter bound on the same two paths.
fn fast_propagation_goal(sale: &FlashSale, payments: &Payments) -> Goal {
    propagation_under(
        "Order → reserved and payment → complete p99 under 50 ms (issue 13)",
        FAST_PROPAGATION_GOAL_MS,
        sale,
        payments,
    )
}

fn propagation_under(goal: &str, limit_ms: f64, sale: &FlashSale, payments: &Payments) -> Goal {
    let reservation = &sale.reservation.latency;
    let completion = &payments.completion.latency;
    Goal {
        goal: goal.into(),
        measured: format!(
            "order → ticket reserved p99 {:.1} ms; payment → order complete p99 {:.1} ms",
            reservation.p99_ms, completion.p99_ms
        ),
        met: sale.reservation.observed == sale.reservation.expected
            && payments.completion.observed == payments.completion.expected
            && reservation.p99_ms < limit_ms
            && completion.p99_ms < limit_ms,
    }
}
