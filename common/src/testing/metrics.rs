//! Reading an app's metrics port the way Prometheus would.

use std::net::SocketAddr;

use reqwest::StatusCode;

/// The Prometheus text served on the metrics port at `addr` (which must answer 200).
pub async fn scrape_metrics(client: &reqwest::Client, addr: SocketAddr) -> String {
    let response = client
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .expect("the metrics port answers");
    assert_eq!(response.status(), StatusCode::OK);
    response.text().await.expect("the metrics text")
}

/// The sample lines of the series starting with `series` (`name{` for a labelled metric, the
/// bare name or `name_count` otherwise) that carry every one of `labels` (`name="value"`).
pub fn metric_samples<'a>(text: &'a str, series: &str, labels: &[&str]) -> Vec<&'a str> {
    text.lines()
        .filter(|line| line.starts_with(series))
        .filter(|line| labels.iter().all(|label| line.contains(label)))
        .collect()
}
