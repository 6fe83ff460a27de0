"""The GitHub workflows: per-service tests with the right backing services, lint, deploy."""

import os
import re
import shutil
import subprocess

import pytest
import yaml

import infra_model as m

WORKFLOWS = m.ROOT / ".github" / "workflows"
RUST_TOOLCHAIN = "dtolnay/rust-toolchain@1.95.0"


def workflow(name):
    path = WORKFLOWS / name
    assert path.exists(), f"missing .github/workflows/{name}"
    return m.load_workflow(path)


def only_job(wf):
    (job,) = wf["jobs"].values()
    return job


def uses(job):
    return [step["uses"] for step in job.get("steps", []) if "uses" in step]


def backing_needed(service):
    reads, _ = m.service_env(service)
    return {m.BACKING_BY_VAR[name] for name in reads if name in m.BACKING_BY_VAR}


def backing_provided(job):
    """Which of mongo/nats/redis the job starts, as service containers or with docker run."""
    provided = {}
    for name, svc in (job.get("services") or {}).items():
        image = svc["image"]
        for kind, wanted in (("mongo", "mongo:7"), ("redis", "redis:7"), ("nats", "nats:2.10")):
            if image == wanted:
                provided[kind] = {"ports": svc.get("ports", []), "how": f"service {name}"}
    for line in m.steps_run_text(job).splitlines():
        if re.search(r"\bdocker run\b", line):
            image = re.search(r"\b(nats|mongo|redis):[\w.]+", line)
            if image:
                kind = image.group(1)
                provided[kind] = {"ports": re.findall(r"-p\s+(\d+:\d+)", line), "how": line.strip(),
                                  "args": line[image.end():].split()}
    return provided


DEFAULT_PORT = {"mongo": "27017:27017", "nats": "4222:4222", "redis": "6379:6379"}
URL = {"mongo": ("MONGO_URL", "mongodb://localhost:27017"), "nats": ("NATS_URL", "nats://localhost:4222"),
       "redis": ("REDIS_URL", "redis://localhost:6379")}


@pytest.mark.parametrize("service", m.SERVICES)
def test_each_service_has_a_test_workflow_for_pull_requests_touching_it(service):
    wf = workflow(f"tests-{service}.yml")
    paths = set(wf["on"]["pull_request"]["paths"])
    assert {f"{service}/**", "common/**", "Cargo.toml", "Cargo.lock",
            f".github/workflows/tests-{service}.yml"} <= paths


@pytest.mark.parametrize("service", m.SERVICES)
def test_each_test_workflow_runs_cargo_test_for_its_crate_only(service):
    job = only_job(workflow(f"tests-{service}.yml"))
    commands = re.findall(r"cargo test[^\n]*", m.steps_run_text(job))
    assert commands, f"tests-{service}.yml runs no cargo test"
    for command in commands:
        assert re.search(rf"-p {service}(\s|$)", command) and "--locked" in command, command
    assert RUST_TOOLCHAIN in uses(job)
    assert "Swatinem/rust-cache@v2" in uses(job)
    assert uses(job)[0].startswith("actions/checkout@")


@pytest.mark.parametrize("service", m.SERVICES)
def test_each_test_workflow_starts_exactly_the_backing_services_its_crate_needs(service):
    job = only_job(workflow(f"tests-{service}.yml"))
    needed = backing_needed(service)
    provided = backing_provided(job)
    assert set(provided) == needed, f"{service} needs {sorted(needed)}, the workflow starts {sorted(provided)}"
    env = job.get("env", {})
    for kind in needed:
        assert DEFAULT_PORT[kind] in provided[kind]["ports"], f"{kind} not published on localhost"
        var, url = URL[kind]
        assert env.get(var) == url, f"tests-{service}.yml should set {var}={url}"
    for kind, (var, _url) in URL.items():
        if kind not in needed:
            assert var not in env


@pytest.mark.parametrize("service", [s for s in m.SERVICES if "nats" in backing_needed(s)])
def test_nats_in_ci_runs_with_jetstream_and_is_awaited(service):
    job = only_job(workflow(f"tests-{service}.yml"))
    nats = backing_provided(job)["nats"]
    assert "-js" in nats.get("args", []), "JetStream needs -js, which service containers cannot pass"
    assert "healthz" in m.steps_run_text(job), "wait for NATS before the tests start"


def test_no_test_workflow_exists_for_an_unknown_service():
    names = {p.name.removeprefix("tests-").removesuffix(".yml") for p in WORKFLOWS.glob("tests-*.yml")}
    assert names == set(m.SERVICES)


def test_lint_runs_rustfmt_check_and_clippy_denying_warnings():
    wf = workflow("lint.yml")
    assert "pull_request" in wf["on"]
    text = "\n".join(m.steps_run_text(job) for job in wf["jobs"].values())
    assert re.search(r"cargo fmt\b.*--check", text)
    assert re.search(r"cargo clippy --workspace --all-targets\b.*-- -D warnings", text)
    assert any(RUST_TOOLCHAIN in uses(job) for job in wf["jobs"].values())
    assert "tests-infra/run.sh" in text


def test_deploy_runs_on_pushes_to_main_and_builds_every_service_image():
    wf = workflow("deploy.yml")
    assert wf["on"]["push"]["branches"] == ["main"]
    images = wf["jobs"]["images"]
    assert sorted(images["strategy"]["matrix"]["service"]) == sorted(m.SERVICES)
    (build,) = [s for s in images["steps"] if s.get("uses", "").startswith("docker/build-push-action@")]
    assert build["with"]["build-args"] == "SERVICE=${{ matrix.service }}"
    assert build["with"]["push"] is True
    login = [s for s in images["steps"] if s.get("uses", "").startswith("docker/login-action@")]
    assert login and login[0]["with"]["username"] == "${{ secrets.DOCKER_USERNAME }}"
    assert login[0]["with"]["password"] == "${{ secrets.DOCKER_PASSWORD }}"


def test_deploy_applies_base_and_prod_manifests_and_waits_for_every_deployment():
    wf = workflow("deploy.yml")
    rollout = wf["jobs"]["rollout"]
    assert "images" in (rollout["needs"] if isinstance(rollout["needs"], list) else [rollout["needs"]])
    text = m.steps_run_text(rollout)
    assert "kubectl apply -f infra/k8s -f infra/k8s-prod" in text
    assert "secrets.KUBECONFIG_DATA" in yaml.safe_dump(rollout)
    loop = re.search(r"for service in ([a-z ]+); do", text)
    assert loop and sorted(loop.group(1).split()) == sorted(m.SERVICES)
    assert 'deployment/${service}-depl' in text
    for service in m.SERVICES:
        assert m.find(m.base_docs(), "Deployment", f"{service}-depl") is not None


def deploy_rewrite_script():
    rollout = workflow("deploy.yml")["jobs"]["rollout"]
    (step,) = [s for s in rollout["steps"] if "sed " in s.get("run", "")]
    return step["run"]


def test_deploy_rewrites_every_service_image_to_the_pushed_tag_and_the_host_to_prod_host(tmp_path):
    shutil.copytree(m.ROOT / "infra", tmp_path / "infra")
    env = {**os.environ, "REGISTRY_USER": "someone", "GITHUB_SHA": "0123abc", "PROD_HOST": "shop.example.org"}
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", deploy_rewrite_script()], cwd=tmp_path, env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    docs = m.docs_in(tmp_path / "infra" / "k8s")
    for service in m.SERVICES:
        (dep,) = [d for d in docs if d.kind == "Deployment" and d.name == m.deployment_name(service)]
        assert m.container(dep, service)["image"] == f"someone/ticketing-{service}:0123abc"
    for sts in (d for d in docs if d.kind == "StatefulSet"):
        assert not m.container(sts)["image"].startswith("someone/"), "public images stay as they are"
    prod = m.docs_in(tmp_path / "infra" / "k8s-prod")
    ingress = [d for d in prod if d.kind == "Ingress"][0]
    assert list(m.ingress_routes(ingress)) == ["shop.example.org"]
    assert ingress.body["spec"]["tls"][0]["hosts"] == ["shop.example.org"]


def test_deploy_refuses_to_run_without_a_production_host(tmp_path):
    shutil.copytree(m.ROOT / "infra", tmp_path / "infra")
    env = {**os.environ, "REGISTRY_USER": "someone", "GITHUB_SHA": "0123abc", "PROD_HOST": ""}
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", deploy_rewrite_script()], cwd=tmp_path, env=env,
                          capture_output=True, text=True)
    assert done.returncode != 0 and "PROD_HOST" in done.stderr


def test_actionlint_and_shellcheck_find_no_problem_in_any_workflow():
    actionlint = m.ensure_actionlint()
    shellcheck = m.tool("shellcheck")
    assert shellcheck, "shellcheck not found: run the checks through tests-infra/run.sh"
    files = sorted(str(p) for p in WORKFLOWS.glob("*.yml"))
    done = subprocess.run([actionlint, "-shellcheck", shellcheck, "-no-color", *files], cwd=m.ROOT,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
