"""docs/deploy.md tells people how to create everything the manifests and the deploy workflow expect."""

import re

import pytest

import infra_model as m

DOCS_TEXT = (m.ROOT / "docs" / "deploy.md").read_text()


@pytest.mark.parametrize("name,keys", sorted(m.SECRET_REFS.items()))
def test_the_docs_show_how_to_create_each_secret_with_its_key(name, keys):
    for key in keys:
        assert re.search(rf"kubectl create secret generic {name} --from-literal={key}=", DOCS_TEXT), (name, key)


@pytest.mark.parametrize("name,keys", sorted(m.CONFIG_MAP_REFS.items()))
def test_the_docs_show_how_to_create_each_config_map_with_its_key(name, keys):
    for key in keys:
        assert re.search(rf"kubectl create configmap {name} --from-literal={key}=", DOCS_TEXT), (name, key)


def test_the_docs_name_every_secret_and_variable_the_deploy_workflow_uses():
    deploy = (m.ROOT / ".github" / "workflows" / "deploy.yml").read_text()
    used = set(re.findall(r"\$\{\{\s*(?:secrets|vars)\.(\w+)\s*\}\}", deploy))
    assert used, "deploy.yml uses no secret?"
    missing = sorted(name for name in used if f"`{name}`" not in DOCS_TEXT)
    assert not missing, f"docs/deploy.md does not explain {missing}"


def test_the_docs_cover_the_cluster_prerequisites_and_the_dev_loop():
    for needle in ("ingress-nginx", "StorageClass", "skaffold dev", "127.0.0.1 ticketing.io",
                   "ingress-nginx-controller.ingress-nginx.svc.cluster.local", "letsencrypt-prod",
                   "ticketing.example.com", "v4beta14"):
        assert needle in DOCS_TEXT, needle
