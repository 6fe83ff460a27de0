"""Every YAML file parses, and every Kubernetes manifest is valid and internally consistent."""

from collections import Counter

import kubernetes_validate
import pytest
import yaml

import infra_model as m

# The oldest Kubernetes the manifests must work on (preStop `sleep` is on by default from 1.30) and
# the newest that kubernetes-validate ships schemas for.
KUBERNETES_VERSIONS = ["1.30.0", kubernetes_validate.utils.latest_version()]

YAML_FILES = m.repo_files(".yaml", ".yml")
MANIFESTS = m.manifest_files()
DOCS = [doc for path in MANIFESTS for doc in m.load_docs(path)]
WORKLOADS = m.workloads(DOCS)
# Deployments, StatefulSets and Jobs: every container is checked alike.
POD_WORKLOADS = m.pod_workloads(DOCS)
# Cross-object checks (a Service selects its workload, a StatefulSet's governing Service) look inside
# one deployment target at a time: infra/k8s and infra/k8s-ha hold objects of the same names.
TARGET_DOCS = {target: m.target_docs(target) for target in m.TARGETS}


def doc_id(doc):
    return f"{m.rel(doc.path)}#{doc.index}"


@pytest.mark.parametrize("path", YAML_FILES, ids=m.rel)
def test_every_yaml_file_in_the_repository_parses(path):
    with path.open() as f:
        docs = [d for d in yaml.safe_load_all(f) if d is not None]
    assert docs, f"{m.rel(path)} holds no YAML document"


def test_the_manifest_folders_hold_manifests():
    for folder in m.manifest_dirs():
        assert m.manifest_files(folder), f"{m.rel(folder)} has no .yaml files"


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("doc", DOCS, ids=doc_id)
def test_every_manifest_validates_strictly_against_the_kubernetes_schema(doc, version):
    try:
        kubernetes_validate.validate(doc.body, version, strict=True)
    except kubernetes_validate.ValidationError as e:
        path = "/".join(str(p) for p in e.path)
        pytest.fail(f"{doc.where()} is invalid for Kubernetes {version} at {path or '(top)'}: {e.message}",
                    pytrace=False)
    except kubernetes_validate.SchemaNotFoundError as e:
        pytest.fail(f"{doc.where()}: {e.message}", pytrace=False)


@pytest.mark.parametrize("path", MANIFESTS, ids=m.rel)
def test_every_manifest_file_starts_with_a_comment_saying_what_it_is(path):
    assert path.read_text().startswith("#"), f"{m.rel(path)} should open with a comment"


def test_no_two_objects_share_a_kind_and_name_within_one_deployment_target():
    for target in ((workloads, ingresses) for workloads in m.TARGETS.values() for ingresses in m.INGRESS_DIRS):
        docs = m.docs_in(*(m.ROOT / "infra" / d for d in target))
        counts = Counter((d.kind, d.name) for d in docs)
        dupes = [key for key, n in counts.items() if n > 1]
        assert not dupes, f"duplicate objects when applying infra/{' + infra/'.join(target)}: {dupes}"


def test_dev_and_prod_folders_hold_only_ingresses_so_they_cannot_diverge_from_the_base():
    for folder in ("k8s-dev", "k8s-prod"):
        kinds = {d.kind for d in m.docs_in(m.ROOT / "infra" / folder)}
        assert kinds == {"Ingress"}, f"infra/{folder} holds {kinds}"


@pytest.mark.parametrize("doc", WORKLOADS, ids=doc_id)
def test_every_workload_selector_matches_its_pod_labels(doc):
    selector = doc.body["spec"]["selector"]["matchLabels"]
    labels = doc.body["spec"]["template"]["metadata"]["labels"]
    assert selector and all(labels.get(k) == v for k, v in selector.items()), doc.where()


@pytest.mark.parametrize("doc", POD_WORKLOADS, ids=doc_id)
def test_every_container_has_cpu_and_memory_requests_and_limits(doc):
    for c in m.pod_spec(doc)["containers"]:
        res = c.get("resources", {})
        for part in ("requests", "limits"):
            missing = {"cpu", "memory"} - set(res.get(part, {}))
            assert not missing, f"{doc.where()} container {c['name']} lacks {part} {missing}"


@pytest.mark.parametrize("doc", POD_WORKLOADS, ids=doc_id)
def test_every_image_is_pinned_to_a_tag_or_built_by_skaffold(doc):
    for c in m.pod_spec(doc)["containers"]:
        image = c["image"]
        assert image.startswith("ticketing/") or (":" in image and not image.endswith(":latest")), (
            f"{doc.where()} uses {image}: pin a version tag")


@pytest.mark.parametrize("doc", POD_WORKLOADS, ids=doc_id)
def test_every_probe_targets_a_declared_container_port(doc):
    for c in m.pod_spec(doc)["containers"]:
        for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
            probe = c.get(kind)
            if not probe:
                continue
            handler = probe.get("httpGet") or probe.get("tcpSocket")
            if handler:
                assert m.container_port(c, handler["port"]) is not None, (
                    f"{doc.where()} {kind} port {handler['port']} is not a port of container {c['name']}")


@pytest.mark.parametrize("doc", POD_WORKLOADS, ids=doc_id)
def test_every_mounted_volume_is_declared(doc):
    spec = doc.body["spec"]
    declared = {v["name"] for v in m.pod_spec(doc).get("volumes", [])}
    declared |= {t["metadata"]["name"] for t in spec.get("volumeClaimTemplates", [])}
    for c in m.pod_spec(doc)["containers"]:
        for mount in c.get("volumeMounts", []):
            assert mount["name"] in declared, f"{doc.where()} mounts undeclared volume {mount['name']}"


SERVICES = [(target, d) for target, docs in TARGET_DOCS.items() for d in docs if d.kind == "Service"]
STATEFULSETS = [(target, d) for target, docs in TARGET_DOCS.items() for d in docs if d.kind == "StatefulSet"]


def pair_id(pair):
    return doc_id(pair[1]) if isinstance(pair, tuple) else pair


@pytest.mark.parametrize("target,svc", SERVICES, ids=pair_id)
def test_every_service_selects_exactly_one_workload_and_targets_its_ports(target, svc):
    targets = [w for w in m.workloads(TARGET_DOCS[target]) if m.selects(svc, w)]
    assert len(targets) == 1, f"{svc.where()} selects {[w.name for w in targets]}"
    (workload,) = targets
    for port in svc.body["spec"]["ports"]:
        target = port.get("targetPort", port["port"])
        found = [m.container_port(c, target) for c in m.pod_spec(workload)["containers"]]
        assert any(p is not None for p in found), (
            f"{svc.where()} port {port['port']} -> {target} is no port of {workload.where()}")


@pytest.mark.parametrize("target,doc", STATEFULSETS, ids=pair_id)
def test_every_statefulset_is_governed_by_an_existing_headless_service(target, doc):
    name = doc.body["spec"]["serviceName"]
    svc = m.find(TARGET_DOCS[target], "Service", name)
    assert svc is not None, f"{doc.where()} names serviceName {name}, which does not exist"
    assert svc.body["spec"].get("clusterIP") == "None", f"{svc.where()} should be headless"
    assert m.selects(svc, doc), f"{svc.where()} does not select {doc.where()}"


def _rust_duration_secs(path, const):
    """Seconds of a `const NAME: Duration = Duration::from_secs(N)` in a Rust source file."""
    import re

    text = (m.ROOT / path).read_text()
    found = re.search(rf"const {const}: Duration = Duration::from_secs\((\d+)\)", text)
    assert found, f"{path} no longer defines {const} with Duration::from_secs"
    return int(found.group(1))


@pytest.mark.parametrize("target", m.TARGETS)
def test_a_stopping_payments_pod_outlives_its_charges_in_flight_and_the_client_outwaits_them(target):
    # A charge runs at most the Stripe timeout; payments' shutdown waits for charges in flight, so
    # Kubernetes must not SIGKILL it before: grace period > preStop sleep + Stripe timeout.
    stripe_timeout = _rust_duration_secs("payments/src/settings.rs", "DEFAULT_STRIPE_TIMEOUT")
    payments = m.find(TARGET_DOCS[target], "Deployment", m.deployment_name("payments"))
    assert payments is not None, "no payments Deployment"
    spec = m.pod_spec(payments)
    container = m.container(payments)
    overridden = m.env_entries(container).get("STRIPE_TIMEOUT_MS", {}).get("value")
    if overridden is not None:
        stripe_timeout = int(overridden) / 1000
    pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    grace = spec.get("terminationGracePeriodSeconds", 30)
    assert grace > pre_stop + stripe_timeout, (
        f"payments: terminationGracePeriodSeconds {grace} must exceed preStop {pre_stop} s "
        f"+ Stripe timeout {stripe_timeout} s, or a rollout can cut a charge in flight"
    )
    # The client's payment call must wait longer than a charge can take.
    client_wait = _rust_duration_secs("client/src/api.rs", "PAYMENT_TIMEOUT")
    assert client_wait > stripe_timeout, (
        f"client PAYMENT_TIMEOUT {client_wait} s must exceed payments' Stripe timeout {stripe_timeout} s"
    )
