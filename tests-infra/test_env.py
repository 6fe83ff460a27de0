"""The environment each Deployment gives its service matches what the service reads.

Which variables a service reads comes from its `src/settings.rs` (plus the parts of
`common/src/settings.rs` it uses) once that file exists, and from the contract table until then.
Every check runs on both deployment targets: infra/k8s and the production topology infra/k8s-ha.
"""

import re

import pytest

import infra_model as m

TARGET_DOCS = m.all_target_docs()
DOCS = TARGET_DOCS["base"]
EACH = pytest.mark.parametrize("target,service", [(t, s) for t in m.TARGETS for s in m.SERVICES])


def env_of(service, target="base"):
    return m.env_entries(m.container(m.target_deployment(service, target), service))


@EACH
def test_each_deployment_provides_every_variable_its_service_requires(target, service):
    reads, source = m.service_env(service)
    env = env_of(service, target)
    missing = sorted(name for name, required in reads.items() if required and name not in env)
    assert not missing, f"{service} requires {missing} ({source}) but its Deployment does not set them"


@EACH
def test_each_deployment_sets_only_variables_its_service_reads(target, service):
    reads, source = m.service_env(service)
    # A variable set ahead of the code (PENDING_ENV) is tolerated while no service reads it yet;
    # test_ha.py reports it as expected to fail until then.
    read_anywhere = {name for s in m.SERVICES for name in m.service_env(s)[0]}
    pending = {name for name in m.PENDING_ENV if name not in read_anywhere}
    unread = sorted(set(env_of(service, target)) - set(reads) - pending)
    assert not unread, f"infra/{m.TARGETS[target]}: {service} never reads {unread} ({source}): a typo or a stale setting"


@EACH
def test_each_required_variable_of_a_deployment_is_not_optional_in_kubernetes(target, service):
    reads, _ = m.service_env(service)
    for name, required in reads.items():
        entry = env_of(service, target).get(name)
        if not required or entry is None:
            continue
        ref = entry.get("valueFrom", {})
        for kind in ("secretKeyRef", "configMapKeyRef"):
            assert not ref.get(kind, {}).get("optional"), f"{service}: required {name} marked optional"
        if "value" in entry:
            assert str(entry["value"]).strip(), f"{service}: required {name} is blank"


@EACH
def test_credentials_come_from_the_documented_secrets_never_from_literals(target, service):
    for name, entry in env_of(service, target).items():
        if name in m.SECRET_VARS:
            assert "value" not in entry, f"{service}: {name} must not be a literal"
            ref = entry.get("valueFrom", {}).get("secretKeyRef")
            assert ref is not None, f"{service}: {name} must come from a Secret"
            assert (ref["name"], ref["key"]) == m.SECRET_VARS[name]
        if name in m.KEY_VARS:
            assert "value" not in entry, f"{service}: {name} must come from a ConfigMap or Secret"


def all_refs(kind):
    refs = set()
    for doc in m.pod_workloads([d for docs in TARGET_DOCS.values() for d in docs]):
        for c in m.pod_spec(doc)["containers"]:
            for entry in c.get("env", []):
                ref = entry.get("valueFrom", {}).get(kind)
                if ref:
                    refs.add((ref["name"], ref["key"]))
            for source in c.get("envFrom", []):
                assert kind.replace("KeyRef", "Ref") not in source, "use per-key references, not envFrom"
    return refs


def test_only_the_documented_secrets_and_config_maps_are_referenced():
    documented = {(name, key) for name, keys in m.SECRET_REFS.items() for key in keys}
    assert all_refs("secretKeyRef") <= documented
    documented = {(name, key) for name, keys in m.CONFIG_MAP_REFS.items() for key in keys}
    assert all_refs("configMapKeyRef") <= documented


@pytest.mark.parametrize("target", m.TARGETS)
def test_auth_marks_the_session_cookie_secure(target):
    assert env_of("auth", target)["COOKIE_SECURE"]["value"] == "true"


@pytest.mark.parametrize("target", m.TARGETS)
def test_the_client_calls_the_apis_through_the_ingress_controller_inside_the_cluster(target):
    assert env_of("client", target)["API_BASE_URL"]["value"] == (
        "http://ingress-nginx-controller.ingress-nginx.svc.cluster.local")


def test_the_contract_table_and_the_parsed_settings_agree_where_both_exist():
    """Once a settings.rs exists, a difference from the contract is either a bug or a contract change."""
    differences = {}
    for service in m.SERVICES:
        parsed = m.parsed_env(service)
        if parsed is None:
            continue
        contract = m.ENV_CONTRACT[service]
        required = lambda table: {k for k, v in table.items() if v}  # noqa: E731
        if required(parsed) != required(contract):
            differences[service] = {"required in code": sorted(required(parsed)),
                                    "required by contract": sorted(required(contract))}
    assert not differences, f"update ENV_CONTRACT in tests-infra/infra_model.py or the code: {differences}"


# Key material that must never be committed. The patterns are assembled here so that this file does
# not itself contain them.
_STRIPE = "sk_" + "(?:live|test)"
SECRET_PATTERNS = [
    re.compile(_STRIPE),
    re.compile("rk_" + r"(?:live|test)_[0-9A-Za-z]{8,}"),
    re.compile("pk_" + r"(?:live|test)_[0-9A-Za-z]{8,}"),
    re.compile("whsec_" + "[0-9A-Za-z]{8,}"),
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
]
# The scripts' local Stripe double accepts this made-up key.
ALLOWED = {"sk_" + "test_123"}


def is_test_fixture(path):
    return "tests" in path.relative_to(m.ROOT).parts[1:-1] or path.relative_to(m.ROOT).parts[0] == "tests"


def test_no_key_or_secret_value_is_committed_anywhere():
    leaks = []
    for path in m.repo_files():
        if is_test_fixture(path):
            continue
        try:
            text = path.read_text()
        except (UnicodeDecodeError, OSError):
            continue
        for pattern in SECRET_PATTERNS:
            for match in pattern.finditer(text):
                token = re.match(r"[0-9A-Za-z_]+", text[match.start():]).group()
                if token in ALLOWED:
                    continue
                line = text.count("\n", 0, match.start()) + 1
                leaks.append(f"{m.rel(path)}:{line}: {token[:12]}...")
    assert not leaks, "key material in the repository:\n" + "\n".join(leaks)
