"""The ingresses route each path prefix to the service that owns it, everywhere alike."""

from urllib.parse import urlparse

import pytest

import infra_model as m

BASE = m.base_docs()
HA = m.target_docs("ha")
DEV = m.docs_in(m.ROOT / "infra" / "k8s-dev")
PROD = m.docs_in(m.ROOT / "infra" / "k8s-prod")
EXPECTED = {prefix: (m.service_name(svc), m.HTTP_PORT) for prefix, svc in m.ROUTES.items()}
PLACEHOLDER_HOST = "ticketing.example.com"


def the_ingress(docs, where):
    ingresses = [d for d in docs if d.kind == "Ingress"]
    assert len(ingresses) == 1, f"{where} should hold exactly one Ingress"
    return ingresses[0]


def table(routes):
    return {prefix: (svc, port) for prefix, (svc, port, _raw) in routes.items()}


@pytest.mark.parametrize("docs,where,host", [(DEV, "infra/k8s-dev", "ticketing.io"),
                                             (PROD, "infra/k8s-prod", PLACEHOLDER_HOST)], ids=["dev", "prod"])
def test_the_public_ingress_routes_every_prefix_to_its_service_on_port_3000(docs, where, host):
    routes = m.ingress_routes(the_ingress(docs, where))
    assert list(routes) == [host]
    assert table(routes[host]) == EXPECTED


@pytest.mark.parametrize("docs,where", [(DEV, "infra/k8s-dev"), (PROD, "infra/k8s-prod")], ids=["dev", "prod"])
def test_the_public_ingress_uses_ingress_nginx_regex_paths(docs, where):
    ingress = the_ingress(docs, where)
    assert ingress.body["spec"].get("ingressClassName") == "nginx"
    assert ingress.body["metadata"]["annotations"]["nginx.ingress.kubernetes.io/use-regex"] == "true"
    for rule in ingress.body["spec"]["rules"]:
        for p in rule["http"]["paths"]:
            assert p["pathType"] == "ImplementationSpecific", p["path"]
            assert p["path"].endswith("?(.*)"), f"{p['path']} should match the prefix and all below it"


@pytest.mark.parametrize("docs,services", [(BASE, BASE), (DEV, BASE), (PROD, BASE), (HA, HA), (DEV, HA), (PROD, HA)],
                         ids=["base", "dev-on-base", "prod-on-base", "ha", "dev-on-ha", "prod-on-ha"])
def test_every_ingress_backend_is_an_existing_service_port(docs, services):
    for ingress in (d for d in docs if d.kind == "Ingress"):
        for host, routes in m.ingress_routes(ingress).items():
            for prefix, (name, port, _raw) in routes.items():
                svc = m.find(services, "Service", name)
                assert svc is not None, f"{ingress.where()} {host}{prefix} -> missing Service {name}"
                assert port in [p["port"] for p in svc.body["spec"]["ports"]]


def test_the_production_ingress_gets_a_certificate_for_its_host_from_cert_manager():
    ingress = the_ingress(PROD, "infra/k8s-prod")
    annotations = ingress.body["metadata"]["annotations"]
    assert annotations.get("cert-manager.io/cluster-issuer") == "letsencrypt-prod"
    tls_hosts = {h for t in ingress.body["spec"]["tls"] for h in t["hosts"]}
    assert all(t.get("secretName") for t in ingress.body["spec"]["tls"])
    assert tls_hosts == set(m.ingress_routes(ingress)), "every production host needs TLS"


def test_the_production_host_placeholder_is_the_one_the_deploy_workflow_replaces():
    deploy = (m.ROOT / ".github" / "workflows" / "deploy.yml").read_text()
    assert PLACEHOLDER_HOST.replace(".", r"\.") in deploy and "PROD_HOST" in deploy


@pytest.mark.parametrize("docs,where", [(BASE, "infra/k8s"), (HA, "infra/k8s-ha")], ids=["base", "ha"])
def test_the_client_reaches_the_apis_through_the_internal_ingress(docs, where):
    client = m.find(docs, "Deployment", m.deployment_name("client"))
    url = m.env_entries(m.container(client, "client"))["API_BASE_URL"]["value"]
    host = urlparse(url).hostname
    internal = [d for d in docs if d.kind == "Ingress"]
    assert len(internal) == 1, f"{where} should hold the internal API ingress only"
    ingress = internal[0]
    routes = m.ingress_routes(ingress)
    assert list(routes) == [host], f"the internal ingress should serve exactly {host}"
    api = {p: t for p, t in EXPECTED.items() if p != "/"}
    assert table(routes[host]) == api, "the internal ingress routes the API prefixes, and nothing else"
    assert not ingress.body["spec"].get("tls"), "TLS would make ingress-nginx redirect the client to https"
    assert ingress.body["spec"].get("ingressClassName") == "nginx"
    assert ingress.body["metadata"]["annotations"]["nginx.ingress.kubernetes.io/use-regex"] == "true"


def test_the_local_nginx_conf_routes_the_same_prefixes_to_the_same_services():
    path = m.ROOT / "infra" / "local" / "nginx.conf"
    if not path.exists():
        pytest.skip("infra/local/nginx.conf is not written yet")
    locations = m.nginx_locations(path.read_text())
    local = {prefix: m.LOCAL_PORTS.get(port, f"unknown port {port}") for prefix, port in locations.items()}
    for prefix, service in m.ROUTES.items():
        assert local.get(prefix) == service, (
            f"nginx.conf sends {prefix} to {local.get(prefix)}, the ingress to {service}")
    for prefix, service in local.items():
        if service != "client":
            assert m.ROUTES.get(prefix) == service, f"nginx.conf routes {prefix} to {service}; the ingress does not"
