"""Each of the six services is deployed the way the contract says, with its backing stores.

The service checks run on both deployment targets (infra/k8s and infra/k8s-ha); the backing-store
checks here are those of infra/k8s (one member each), test_ha.py has the production topology's."""

import re
from urllib.parse import urlparse

import pytest

import infra_model as m

TARGET_DOCS = m.all_target_docs()
DOCS = TARGET_DOCS["base"]
EACH = pytest.mark.parametrize("target,service", [(t, s) for t in m.TARGETS for s in m.SERVICES])


def deployment(service, target="base"):
    return m.target_deployment(service, target)


def app_container(service, target="base"):
    return m.container(deployment(service, target), service)


@EACH
def test_each_service_has_a_deployment_running_its_image_on_port_3000_with_metrics_on_9464(target, service):
    c = app_container(service, target)
    assert c["image"] == m.image_name(service)
    ports = [(p.get("name"), p["containerPort"]) for p in c.get("ports", [])]
    assert ports == [("http", m.HTTP_PORT), ("metrics", m.METRICS_PORT)]
    for var, want in (("PORT", m.HTTP_PORT), ("METRICS_PORT", m.METRICS_PORT)):
        entry = m.env_entries(c).get(var)
        if entry is not None:
            assert entry.get("value") == str(want), f"{service}: {var} env disagrees with containerPort"


@EACH
def test_each_service_pod_asks_prometheus_to_scrape_its_metrics_port(target, service):
    annotations = deployment(service, target).body["spec"]["template"]["metadata"].get("annotations", {})
    assert annotations.get("prometheus.io/scrape") == "true", f"{service}: no prometheus.io/scrape"
    assert annotations.get("prometheus.io/port") == str(m.METRICS_PORT), f"{service}: prometheus.io/port"
    assert annotations.get("prometheus.io/path", "/metrics") == "/metrics"


@EACH
def test_each_service_has_a_cluster_ip_service_named_srv_on_port_3000(target, service):
    svc = m.find(TARGET_DOCS[target], "Service", m.service_name(service))
    assert svc is not None, f"infra/{m.TARGETS[target]}: no Service {m.service_name(service)}"
    spec = svc.body["spec"]
    assert spec.get("type", "ClusterIP") == "ClusterIP" and spec.get("clusterIP") != "None"
    assert m.selects(svc, deployment(service, target)), f"{svc.where()} does not select {m.deployment_name(service)}"
    (port,) = spec["ports"]
    assert port["port"] == m.HTTP_PORT
    assert m.container_port(app_container(service, target), port.get("targetPort", port["port"])) == m.HTTP_PORT


@EACH
def test_each_service_is_probed_for_liveness_on_healthz_and_readiness_on_readyz(target, service):
    c = app_container(service, target)
    for kind, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        probe = c.get(kind, {}).get("httpGet")
        assert probe, f"{service} has no HTTP {kind}"
        assert probe["path"] == path, f"{service} {kind} hits {probe['path']}, not {path}"
        assert m.container_port(c, probe["port"]) == m.HTTP_PORT
    startup = c.get("startupProbe", {}).get("httpGet")
    if startup:
        assert startup["path"] == "/healthz", "the startup probe must not wait for dependencies"


def test_the_rust_server_serves_healthz_and_readyz():
    path = m.ROOT / "common" / "src" / "server.rs"
    if not path.exists():
        pytest.skip("common/src/server.rs is not written yet")
    tokens = m.strip_test_code(m.rust_tokens(path.read_text()))
    literals = {t.text for t in tokens if t.kind == "str"}
    assert {"/healthz", "/readyz"} <= literals, "common/src/server.rs should route /healthz and /readyz"


@pytest.mark.parametrize("service", m.SERVICES)
def test_each_service_runs_the_agreed_number_of_replicas(service):
    assert deployment(service).body["spec"].get("replicas", 1) == m.REPLICAS[service]


@EACH
def test_each_service_runs_as_a_non_root_user_with_a_read_only_root_filesystem(target, service):
    pod = m.pod_spec(deployment(service, target))
    c = app_container(service, target)
    assert pod.get("securityContext", {}).get("runAsNonRoot") is True
    sc = c.get("securityContext", {})
    assert sc.get("readOnlyRootFilesystem") is True
    assert sc.get("allowPrivilegeEscalation") is False
    assert "ALL" in sc.get("capabilities", {}).get("drop", [])


def url_target(url):
    parsed = urlparse(url)
    return parsed.scheme, parsed.hostname, parsed.port


def statefulset_behind(service_name):
    """The StatefulSet that a Service name resolves to, with the Service."""
    svc = m.find(DOCS, "Service", service_name)
    assert svc is not None, f"no Service {service_name}"
    (workload,) = [w for w in m.workloads(DOCS) if m.selects(svc, w)]
    return svc, workload


@pytest.mark.parametrize("service", m.DATA_SERVICES)
def test_each_data_service_has_its_own_mongo_statefulset_with_a_volume(service):
    env = m.env_entries(app_container(service))
    scheme, host, port = url_target(env["MONGO_URL"]["value"])
    assert (scheme, host, port) == ("mongodb", f"{service}-mongo-srv", 27017)
    svc, sts = statefulset_behind(host)
    assert sts.kind == "StatefulSet" and sts.name == f"{service}-mongo"
    assert svc.body["spec"].get("clusterIP") == "None", "the Mongo service is headless"
    assert [p["port"] for p in svc.body["spec"]["ports"]] == [27017]
    c = m.container(sts)
    assert c["image"] == "mongo:7"
    (claim,) = sts.body["spec"]["volumeClaimTemplates"]
    mounts = {v["name"]: v["mountPath"] for v in c.get("volumeMounts", [])}
    assert mounts.get(claim["metadata"]["name"]) == "/data/db"
    assert claim["spec"]["resources"]["requests"]["storage"]


@pytest.mark.parametrize("target", m.TARGETS)
def test_no_two_services_share_a_database(target):
    urls = [m.env_entries(app_container(s, target)).get("MONGO_URL", {}).get("value") for s in m.SERVICES]
    urls = [u for u in urls if u]
    assert len(urls) == len(set(urls)) == len(m.DATA_SERVICES)


def test_nats_runs_jetstream_with_its_store_on_a_volume():
    svc, sts = statefulset_behind("nats-srv")
    c = m.container(sts)
    assert re.fullmatch(r"nats:2\.10(\.\d+)?(-\w+)?", c["image"]), c["image"]
    args = c.get("args", [])
    assert "-js" in args or "--jetstream" in args
    store = args[args.index("-sd") + 1]
    (claim,) = sts.body["spec"]["volumeClaimTemplates"]
    mounts = {v["name"]: v["mountPath"] for v in c["volumeMounts"]}
    assert mounts[claim["metadata"]["name"]] == store, "the JetStream store dir must be the volume"
    assert 4222 in [p["port"] for p in svc.body["spec"]["ports"]]


@pytest.mark.parametrize("service", ["tickets", "orders", "payments", "expiration"])
def test_each_service_on_the_bus_points_nats_url_at_nats_srv(service):
    env = m.env_entries(app_container(service))
    assert url_target(env["NATS_URL"]["value"]) == ("nats", "nats-srv", 4222)


def test_expiration_redis_keeps_an_append_only_file_on_a_volume():
    env = m.env_entries(app_container("expiration"))
    scheme, host, port = url_target(env["REDIS_URL"]["value"])
    assert (scheme, host, port) == ("redis", "expiration-redis-srv", 6379)
    svc, sts = statefulset_behind(host)
    c = m.container(sts)
    assert c["image"] == "redis:7"
    args = c.get("args", [])
    assert args[args.index("--appendonly") + 1] == "yes"
    data_dir = args[args.index("--dir") + 1] if "--dir" in args else "/data"
    (claim,) = sts.body["spec"]["volumeClaimTemplates"]
    mounts = {v["name"]: v["mountPath"] for v in c["volumeMounts"]}
    assert mounts[claim["metadata"]["name"]] == data_dir
    assert [p["port"] for p in svc.body["spec"]["ports"]] == [6379]


def test_only_the_expected_workloads_exist():
    expected = {("Deployment", m.deployment_name(s)) for s in m.SERVICES}
    expected |= {("StatefulSet", f"{s}-mongo") for s in m.DATA_SERVICES}
    expected |= {("StatefulSet", "nats"), ("StatefulSet", "expiration-redis")}
    assert {(w.kind, w.name) for w in m.workloads(DOCS)} == expected
