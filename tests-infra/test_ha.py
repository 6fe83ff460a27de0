"""infra/k8s-ha, the production topology, keeps what it promises: it survives losing a node.

The generic checks (schemas, env vars against settings.rs, probes, ingress backends, ...) already run on
infra/k8s-ha as on infra/k8s (see test_manifests, test_env, test_services, test_ingress). Here:

  * it cannot drift from infra/k8s: every object both hold is identical except for the fields the
    topology changes on purpose (replicas, anti-affinity, the MongoDB URL, the stream replicas);
  * each data service's MongoDB is a 3-member replica set, one member per node, bootstrapped by an
    idempotent Job, and the service writes to it with w=majority;
  * NATS is a 3-node JetStream cluster, one node per node, and the app's streams get 3 replicas;
  * Redis fsyncs its append-only file on every write, on a volume claim;
  * every stateless service runs 2+ replicas with a PodDisruptionBudget, a HorizontalPodAutoscaler,
    pod anti-affinity across nodes and resource requests/limits.

All of it is static: nothing here starts a cluster (docs/deploy.md says what that leaves unverified).
"""

import copy
import os
import re
import shutil
import subprocess
from urllib.parse import parse_qs, urlparse

import pytest

import infra_model as m

HA = m.target_docs("ha")
BASE = m.base_docs()
HOSTNAME = "kubernetes.io/hostname"
MEMBERS = 3  # replica set members, NATS nodes, stream replicas
BUS_SERVICES = ("tickets", "orders", "payments", "expiration")


def the(kind, name, docs=HA):
    found = [d for d in docs if d.kind == kind and d.name == name]
    assert len(found) == 1, f"infra/k8s-ha should hold exactly one {kind} {name}, holds {len(found)}"
    return found[0]


def pod_labels(workload):
    return workload.body["spec"]["template"]["metadata"].get("labels") or {}


def matches(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def env(service):
    return m.env_entries(m.container(the("Deployment", m.deployment_name(service)), service))


def pdb_for(workload):
    pdbs = [d for d in HA if d.kind == "PodDisruptionBudget"
            and matches(d.body["spec"]["selector"].get("matchLabels"), pod_labels(workload))]
    assert len(pdbs) == 1, f"{workload.where()} should be covered by exactly one PodDisruptionBudget"
    return pdbs[0]


def anti_affinity_terms(workload, kind):
    """The pod anti-affinity terms of a workload, `required` or `preferred`, as podAffinityTerms."""
    anti = m.pod_spec(workload).get("affinity", {}).get("podAntiAffinity", {})
    terms = anti.get(f"{kind}DuringSchedulingIgnoredDuringExecution", [])
    return [t["podAffinityTerm"] if kind == "preferred" else t for t in terms]


def spreads_by_hostname(workload, kind):
    labels = pod_labels(workload)
    return any(t.get("topologyKey") == HOSTNAME and matches(t.get("labelSelector", {}).get("matchLabels"), labels)
               for t in anti_affinity_terms(workload, kind))


# --------------------------------------------------------------------------------------------
# No drift from the base


# Per object kind, what the production topology may change in an object the base also has.
def _normalise_deployment(body):
    body = copy.deepcopy(body)
    body["spec"].pop("replicas", None)
    pod = body["spec"]["template"]["spec"]
    pod.pop("affinity", None)
    pod.pop("topologySpreadConstraints", None)
    for c in pod["containers"]:
        env = [e for e in c.get("env", []) if e["name"] not in ("MONGO_URL", "NATS_STREAM_REPLICAS")]
        c["env"] = env
    return body


SHARED_KINDS = {"Deployment": _normalise_deployment, "Service": None, "Ingress": None}


def shared_objects():
    """Base objects the production topology takes over as they are (the data stores are its own)."""
    data_store_services = {f"{s}-mongo-srv" for s in m.DATA_SERVICES} | {"nats-srv", "expiration-redis-srv"}
    return [d for d in BASE if d.kind in SHARED_KINDS and d.name not in data_store_services]


@pytest.mark.parametrize("base", shared_objects(), ids=lambda d: f"{d.kind}-{d.name}")
def test_an_object_of_the_base_differs_in_the_production_topology_only_where_the_topology_says(base):
    ha = the(base.kind, base.name)
    normalise = SHARED_KINDS[base.kind] or (lambda body: body)
    assert normalise(ha.body) == normalise(base.body), (
        f"{ha.where()} differs from {base.where()} beyond replicas, anti-affinity, MONGO_URL and "
        "NATS_STREAM_REPLICAS: make the change in both folders (or teach this test why not)")


def test_the_production_topology_holds_every_base_workload_and_exactly_its_own_extras():
    expected = {("Deployment", m.deployment_name(s)) for s in m.SERVICES}
    expected |= {("StatefulSet", f"{s}-mongo") for s in m.DATA_SERVICES}
    expected |= {("StatefulSet", "nats"), ("StatefulSet", "expiration-redis")}
    expected |= {("Job", f"{s}-mongo-init") for s in m.DATA_SERVICES} | {("Job", "nats-stream-replicas")}
    assert {(w.kind, w.name) for w in m.pod_workloads(HA)} == expected
    assert {(w.kind, w.name) for w in m.workloads(BASE)} <= expected


# --------------------------------------------------------------------------------------------
# Stateless services: replicas, disruption budgets, autoscalers, spreading, resources


@pytest.mark.parametrize("service", m.SERVICES)
def test_each_service_runs_two_or_more_replicas_and_an_autoscaler_that_keeps_that_floor(service):
    dep = the("Deployment", m.deployment_name(service))
    replicas = dep.body["spec"].get("replicas", 1)
    assert replicas >= 2, f"{service} runs {replicas} replica(s): one node loss would take it down"
    hpas = [d for d in HA if d.kind == "HorizontalPodAutoscaler"
            and d.body["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                                      "name": dep.name}]
    assert len(hpas) == 1, f"{service} needs exactly one HorizontalPodAutoscaler"
    (hpa,) = hpas
    assert hpa.body["apiVersion"] == "autoscaling/v2"
    spec = hpa.body["spec"]
    # A kubectl apply sets the Deployment's replicas; equal to the floor, it never scales below it.
    assert spec["minReplicas"] == replicas, f"{hpa.where()} minReplicas should equal the Deployment's replicas"
    assert spec["maxReplicas"] > spec["minReplicas"]
    cpu = [x for x in spec["metrics"] if x["type"] == "Resource" and x["resource"]["name"] == "cpu"]
    assert cpu and cpu[0]["resource"]["target"]["type"] == "Utilization"
    # Utilization is measured against the requests: without them the HPA cannot work.
    assert m.container(dep, service)["resources"]["requests"]["cpu"]


@pytest.mark.parametrize("service", m.SERVICES)
def test_each_service_has_a_disruption_budget_that_keeps_a_replica_serving(service):
    dep = the("Deployment", m.deployment_name(service))
    spec = pdb_for(dep).body["spec"]
    if "maxUnavailable" in spec:
        assert spec["maxUnavailable"] == 1
    else:
        assert 1 <= spec["minAvailable"] < dep.body["spec"]["replicas"], "the budget must allow one eviction"


@pytest.mark.parametrize("service", m.SERVICES)
def test_each_service_prefers_one_replica_per_node(service):
    dep = the("Deployment", m.deployment_name(service))
    assert spreads_by_hostname(dep, "preferred") or spreads_by_hostname(dep, "required"), (
        f"{service}: no pod anti-affinity across {HOSTNAME} selecting its own pods")


@pytest.mark.parametrize("service", m.SERVICES)
def test_each_service_has_requests_and_limits_within_them(service):
    res = m.container(the("Deployment", m.deployment_name(service)), service)["resources"]
    for part in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(res[part]), f"{service} lacks {part}"
    assert quantity(res["requests"]["cpu"]) <= quantity(res["limits"]["cpu"])
    assert quantity(res["requests"]["memory"]) <= quantity(res["limits"]["memory"])


def quantity(value):
    """A Kubernetes quantity as a number (the suffixes these manifests use)."""
    text = str(value)
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "k": 1e3, "M": 1e6, "G": 1e9}
    for suffix, factor in sorted(units.items(), key=lambda kv: -len(kv[0])):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * factor
    return float(text)


# --------------------------------------------------------------------------------------------
# MongoDB replica sets


def mongo_url(service):
    url = env(service)["MONGO_URL"]["value"]
    parsed = urlparse(url)
    hosts = parsed.netloc.split(",")
    return parsed.scheme, hosts, {k: v[0] for k, v in parse_qs(parsed.query).items()}


def arg_after(args, flag):
    assert flag in args, f"{flag} missing from {args}"
    return args[args.index(flag) + 1]


@pytest.mark.parametrize("service", m.DATA_SERVICES)
def test_each_data_service_writes_to_all_three_members_of_its_replica_set_with_majority(service):
    scheme, hosts, options = mongo_url(service)
    sts = the("StatefulSet", f"{service}-mongo")
    governing = sts.body["spec"]["serviceName"]
    assert scheme == "mongodb"
    # Every member by its stable name: the driver finds the primary from any of them.
    assert hosts == [f"{sts.name}-{i}.{governing}:27017" for i in range(MEMBERS)]
    assert options.get("replicaSet") == arg_after(m.container(sts)["args"], "--replSet")
    # Majority writes: an acknowledged insert (the unique keys exclusivity rests on) survives a failover.
    assert options.get("w") == "majority", f"{service}: MONGO_URL needs w=majority"
    # No option that would weaken it.
    assert options.get("journal", "true") != "false" and "wtimeoutMS" not in options


@pytest.mark.parametrize("service", m.DATA_SERVICES)
def test_each_mongo_is_a_three_member_statefulset_with_a_volume_each_one_per_node(service):
    sts = the("StatefulSet", f"{service}-mongo")
    spec = sts.body["spec"]
    assert spec["replicas"] == MEMBERS
    c = m.container(sts)
    assert c["image"] == m.container(the("StatefulSet", sts.name, BASE))["image"], "same MongoDB as the base"
    (claim,) = spec["volumeClaimTemplates"]
    mounts = {v["name"]: v["mountPath"] for v in c["volumeMounts"]}
    assert mounts.get(claim["metadata"]["name"]) == "/data/db"
    assert claim["spec"]["resources"]["requests"]["storage"]
    # Required, not preferred: two members on one node would lose the majority with that node.
    assert spreads_by_hostname(sts, "required"), f"{sts.where()}: members must be on different nodes"
    svc = the("Service", spec["serviceName"])
    assert svc.body["spec"].get("clusterIP") == "None"
    # Members resolve each other before they are ready (no member is ready before the set is initiated).
    assert svc.body["spec"].get("publishNotReadyAddresses") is True
    pdb = pdb_for(sts).body["spec"]
    assert pdb.get("maxUnavailable") == 1 or pdb.get("minAvailable") == MEMBERS // 2 + 1


@pytest.mark.parametrize("service", m.DATA_SERVICES)
def test_each_mongo_member_is_ready_only_as_primary_or_secondary(service):
    """So that the disruption budget counts a member still syncing as unavailable."""
    probe = m.container(the("StatefulSet", f"{service}-mongo"))["readinessProbe"]["exec"]["command"]
    script = probe[-1]
    assert "isWritablePrimary" in script and "secondary" in script


@pytest.mark.parametrize("service", m.DATA_SERVICES)
def test_each_replica_set_is_initiated_by_an_idempotent_job(service):
    sts = the("StatefulSet", f"{service}-mongo")
    job = the("Job", f"{service}-mongo-init")
    c = m.container(job)
    job_env = {k: e["value"] for k, e in m.env_entries(c).items()}
    _, hosts, options = mongo_url(service)
    assert job_env["REPLICA_SET"] == options["replicaSet"]
    assert job_env["MEMBERS"].split(",") == hosts
    assert c["image"] == m.container(sts)["image"], "mongosh of the same MongoDB"
    script = "\n".join(c.get("command", []) + c.get("args", []))
    assert "replSetInitiate" in script
    # Idempotent: it looks for a member already in a set before initiating, and tolerates a race.
    assert script.index("setName") < script.index("replSetInitiate")
    assert "AlreadyInitialized" in script
    # Re-runnable by the next apply (a finished Job's template cannot change in place).
    assert job.body["spec"].get("ttlSecondsAfterFinished") is not None
    assert m.pod_spec(job)["restartPolicy"] in ("OnFailure", "Never")


# --------------------------------------------------------------------------------------------
# NATS JetStream cluster


def nats_conf():
    cm = the("ConfigMap", "nats-config")
    (text,) = cm.body["data"].values()
    return parse_nats_conf(text)


def parse_nats_conf(text):
    """A small reader of the NATS server config format, enough for nats.conf here: `key: value`,
    `key = value` or `key value`, `name { ... }` blocks and `[ ... ]` lists (one item per line or comma
    separated), `#` and `//` comments (at a line's start or after a space). Not supported: includes (refused), quoted strings, `key=value`
    without spaces, values with spaces."""
    assert "include " not in text, "parse_nats_conf does not follow includes"
    text = re.sub(r"(?m)(^|\s)(#|//)[^\n]*", r"\1", text)  # a comment starts a line or follows a space
    text = re.sub(r"(^|[{\s])([A-Za-z_][\w-]*)\s*[:=](?=\s)", r"\1\2 ", text)
    tokens = re.findall(r"\{|\}|\[|\]|[^\s{}\[\],]+", text)

    def block(i, closing):
        out, items = {}, []
        while i < len(tokens) and tokens[i] != closing:
            if closing == "]":
                items.append(tokens[i])
                i += 1
                continue
            key = tokens[i]
            i += 1
            if tokens[i] == "{":
                out[key], i = block(i + 1, "}")
            elif tokens[i] == "[":
                out[key], i = block(i + 1, "]")
            else:
                out[key], i = tokens[i], i + 1
        return (items if closing == "]" else out), i + 1

    conf, _ = block(0, None)
    return conf


def test_the_nats_config_reader_reads_blocks_lists_and_values():
    conf = parse_nats_conf("""
        server_name: $POD_NAME   # a comment
        jetstream { store_dir: /data
          max_file_store = 8G }
        cluster {
          name ticketing
          routes: [
            nats://a:6222
            nats://b:6222, nats://c:6222
          ]
        }
    """)
    assert conf == {"server_name": "$POD_NAME", "jetstream": {"store_dir": "/data", "max_file_store": "8G"},
                    "cluster": {"name": "ticketing", "routes": ["nats://a:6222", "nats://b:6222", "nats://c:6222"]}}


def test_nats_runs_three_jetstream_nodes_that_route_to_each_other_one_per_node():
    sts = the("StatefulSet", "nats")
    spec = sts.body["spec"]
    assert spec["replicas"] == MEMBERS
    c = m.container(sts)
    assert re.fullmatch(r"nats:2\.10(\.\d+)?(-\w+)?", c["image"]), c["image"]
    conf = nats_conf()
    # The config the container runs is the one checked here.
    assert "/etc/nats/nats.conf" in c.get("command", []) + c.get("args", [])
    mounts = {v["name"]: v["mountPath"] for v in c["volumeMounts"]}
    config_volume = [v for v in m.pod_spec(sts)["volumes"] if v.get("configMap", {}).get("name") == "nats-config"]
    assert config_volume and mounts[config_volume[0]["name"]] == "/etc/nats"
    # JetStream on, its file store on the volume claim.
    (claim,) = spec["volumeClaimTemplates"]
    assert conf["jetstream"]["store_dir"] == mounts[claim["metadata"]["name"]]
    # Clustered: a name, unique server names, routes to all three by their stable names.
    cluster = conf["cluster"]
    assert cluster.get("name")
    server_name = conf["server_name"]
    assert server_name.startswith("$")
    name_env = m.env_entries(c)[server_name[1:]]
    assert name_env["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    port = int(cluster["port"])
    assert m.container_port(c, "cluster") == port
    governing = spec["serviceName"]
    assert sorted(cluster["routes"]) == [f"nats://{sts.name}-{i}.{governing}:{port}" for i in range(MEMBERS)]
    svc = the("Service", governing)
    assert svc.body["spec"].get("clusterIP") == "None" and svc.body["spec"].get("publishNotReadyAddresses") is True
    assert {4222, port} <= {p["port"] for p in svc.body["spec"]["ports"]}
    assert spreads_by_hostname(sts, "required"), "NATS nodes must be on different nodes"
    assert pdb_for(sts).body["spec"].get("maxUnavailable") == 1


@pytest.mark.parametrize("service", BUS_SERVICES)
def test_each_service_on_the_bus_reaches_the_cluster_through_nats_srv(service):
    url = urlparse(env(service)["NATS_URL"]["value"])
    assert (url.scheme, url.hostname, url.port) == ("nats", "nats-srv", 4222)
    assert m.selects(the("Service", "nats-srv"), the("StatefulSet", "nats"))


def code_default(pattern, path):
    found = re.search(pattern, (m.ROOT / path).read_text())
    assert found, f"{path} no longer matches {pattern!r}: update tests-infra/test_ha.py"
    return found.group(1)


def test_the_app_streams_are_raised_to_three_replicas():
    # The stream the services use: NATS_STREAM, else the default of common/src/settings.rs.
    default = code_default(r'env\.or\("NATS_STREAM",\s*"([^"]+)"\)', "common/src/settings.rs")
    names = {env(s).get("NATS_STREAM", {}).get("value", default) for s in BUS_SERVICES}
    assert len(names) == 1, f"the services disagree on the stream: {names}"
    (stream,) = names
    suffix = code_default(r'format!\("\{\}(_dead_letters)"', "common/src/bus/dead_letter.rs")
    job = the("Job", "nats-stream-replicas")
    c = m.container(job)
    job_env = {k: e["value"] for k, e in m.env_entries(c).items()}
    assert job_env["STREAMS"].split() == [stream, stream + suffix]
    assert int(job_env["REPLICAS"]) == MEMBERS == the("StatefulSet", "nats").body["spec"]["replicas"]
    assert urlparse(job_env["NATS_URL"]).hostname == "nats-srv"
    script = "\n".join(c.get("args", []))
    assert re.search(r'stream edit "\$stream" --replicas "\$REPLICAS" --force', script)
    assert job.body["spec"].get("ttlSecondsAfterFinished") is not None
    # And the setting the services will read, so that they create the streams so themselves.
    for service in BUS_SERVICES:
        assert env(service).get("NATS_STREAM_REPLICAS", {}).get("value") == str(MEMBERS), service


@pytest.mark.parametrize("name", sorted(m.PENDING_ENV))
def test_variables_the_production_topology_sets_ahead_of_the_code_are_read_by_it(name):
    readers = [s for s in m.SERVICES if name in m.service_env(s)[0]]
    setters = [s for s in m.SERVICES if name in env(s)]
    if not readers:
        pytest.xfail(f"{name} is set for {setters} but no service reads it yet: {m.PENDING_ENV[name]}")
    assert set(setters) <= set(readers), f"{name} is set for {setters}, read by {readers}"


# --------------------------------------------------------------------------------------------
# Redis


def test_expiration_redis_fsyncs_its_append_only_file_on_every_write_on_a_volume():
    url = urlparse(env("expiration")["REDIS_URL"]["value"])
    svc = the("Service", url.hostname)
    (sts,) = [w for w in m.workloads(HA) if m.selects(svc, w)]
    args = m.container(sts)["args"]
    assert arg_after(args, "--appendonly") == "yes"
    assert arg_after(args, "--appendfsync") == "always"
    data_dir = arg_after(args, "--dir") if "--dir" in args else "/data"
    (claim,) = sts.body["spec"]["volumeClaimTemplates"]
    mounts = {v["name"]: v["mountPath"] for v in m.container(sts)["volumeMounts"]}
    assert mounts[claim["metadata"]["name"]] == data_dir


# --------------------------------------------------------------------------------------------
# Deploying it


def test_the_deploy_workflows_image_rewrite_also_serves_the_production_topology(tmp_path):
    """docs/deploy.md deploys infra/k8s-ha by hand with the workflow's own rewrite: it must find every
    service image there and leave the public images (data stores, Jobs) alone."""
    from test_workflows import deploy_rewrite_script

    shutil.copytree(m.ROOT / "infra", tmp_path / "infra")
    script = re.sub(r"infra/k8s(?=[/;\s])", "infra/k8s-ha", deploy_rewrite_script())
    assert "infra/k8s-ha/*.yaml" in script and "infra/k8s/" not in script
    environ = {**os.environ, "REGISTRY_USER": "someone", "GITHUB_SHA": "0123abc", "PROD_HOST": "shop.example.org"}
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path, env=environ,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    docs = m.docs_in(tmp_path / "infra" / "k8s-ha")
    for service in m.SERVICES:
        (dep,) = [d for d in docs if d.kind == "Deployment" and d.name == m.deployment_name(service)]
        assert m.container(dep, service)["image"] == f"someone/ticketing-{service}:0123abc"
    for other in (d for d in m.pod_workloads(docs) if d.kind != "Deployment"):
        assert not m.container(other)["image"].startswith("someone/"), other.where()



def test_the_docs_describe_the_production_topology():
    text = (m.ROOT / "docs" / "deploy.md").read_text()
    for needle in ("infra/k8s-ha", "skaffold dev -p ha", "kubectl apply -f infra/k8s-ha -f infra/k8s-prod",
                   "metrics-server", "NATS_STREAM_REPLICAS", "w=majority", "appendfsync", "node loss",
                   "disk loss", "not verified"):
        assert needle.lower() in text.lower(), needle
