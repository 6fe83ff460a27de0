"""infra/grafana's dashboard only charts metrics the services record, with well-formed panels."""

import json
import re

import infra_model as m

DASHBOARD = json.loads((m.ROOT / "infra" / "grafana" / "flash-sale-dashboard.json").read_text())

# Every metric a service records: `metrics::counter!("name", ...)`, `gauge!`, `histogram!`.
RECORDED = {
    match.group(2): match.group(1)
    for path in m.ROOT.glob("*/src/**/*.rs")
    for match in re.finditer(r'metrics::(counter|gauge|histogram)!\(\s*"([a-z_][a-z0-9_]*)"', path.read_text())
}
PROMQL_WORDS = {"by", "without", "on", "ignoring", "or", "and", "unless", "le", "bool"}


def metrics_of(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (strings, label lists, label matchers,
    function names and keywords removed)."""
    expr = re.sub(r'"[^"]*"', "", expr)
    expr = re.sub(r"\b(by|without)\s*\([^)]*\)", "", expr)
    expr = re.sub(r"\{[^}]*\}", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)
    names = set(re.findall(r"\b([a-z_][a-z0-9_]*)\b(?!\s*\()", expr))
    return names - PROMQL_WORDS


def is_recorded(name: str) -> bool:
    if name in RECORDED:
        return True
    base, _, suffix = name.rpartition("_")
    return suffix in {"bucket", "sum", "count"} and RECORDED.get(base) == "histogram"


def test_the_services_record_metrics_at_all():
    assert {"http_requests_total", "events_handled_total", "outbox_waiting"} <= set(RECORDED), RECORDED


def test_every_panel_has_a_unique_id_a_title_a_place_and_a_query():
    ids = [panel["id"] for panel in DASHBOARD["panels"]]
    assert len(ids) == len(set(ids)), ids
    for panel in DASHBOARD["panels"]:
        assert panel["title"], panel
        assert {"x", "y", "w", "h"} <= set(panel["gridPos"]), panel["title"]
        assert panel["targets"] and all(t["expr"].strip() for t in panel["targets"]), panel["title"]


def test_every_query_charts_only_metrics_a_service_records():
    for panel in DASHBOARD["panels"]:
        for target in panel["targets"]:
            names = metrics_of(target["expr"])
            assert names, (panel["title"], target["expr"])
            unknown = sorted(name for name in names if not is_recorded(name))
            assert not unknown, (panel["title"], unknown)


def test_the_metric_name_reader_sees_through_promql():
    expr = 'histogram_quantile(0.99, sum by (le, route) (rate(http_request_duration_seconds_bucket{status=~"5.."}[5m]))) or vector(0)'
    assert metrics_of(expr) == {"http_request_duration_seconds_bucket"}
    assert metrics_of("count(dependency_up == 0)") == {"dependency_up"}
