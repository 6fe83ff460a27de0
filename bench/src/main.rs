//! `cargo run --release -p bench` (through `scripts/bench.sh`, which starts and stops the app):
//! measures the running app and writes `bench-results/<run>/`. Exits non-zero when the flash sale
//! sold a ticket twice or not exactly once, or a payment did not complete.

use std::process::ExitCode;

use bench::run::{Config, run};

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    let config = Config::from_env()?;
    let (results, out) = run(&config).await?;
    println!("{}", bench::report::summary(&results));
    println!("Full report: {}", out.join("report.md").display());
    let sale = &results.flash_sale;
    let payments = &results.payments;
    if !sale.passed {
        eprintln!(
            "FAILED: the flash sale must sell each of the {} tickets exactly once (sold {}, second 201s for a ticket {}, unsold {}, tickets with several live orders {}, live orders in the database {}, orders in the database {} of which cancelled {}, tickets showing their order {})",
            sale.tickets,
            sale.sold,
            sale.oversold,
            sale.unsold,
            sale.tickets_with_several_live_orders,
            sale.live_orders_in_database,
            sale.orders_in_database,
            sale.cancelled_orders_in_database,
            sale.tickets_showing_their_order
        );
        return Ok(ExitCode::FAILURE);
    }
    if payments.paid != payments.orders || payments.completion.observed != payments.orders {
        eprintln!(
            "FAILED: {} of {} orders paid, {} seen complete: {}",
            payments.paid,
            payments.orders,
            payments.completion.observed,
            payments.error_samples.join("; ")
        );
        return Ok(ExitCode::FAILURE);
    }
    if !payments.money_violations.is_empty() {
        eprintln!(
            "FAILED: the money invariant: {}",
            payments.money_violations.join("; ")
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}
