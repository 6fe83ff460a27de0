"""skaffold.yaml builds exactly the images the manifests run, from the one Dockerfile."""

import fnmatch
import glob
import tomllib
import warnings

import pytest
import yaml

import infra_model as m

SKAFFOLD = yaml.safe_load((m.ROOT / "skaffold.yaml").read_text())
ARTIFACTS = SKAFFOLD["build"]["artifacts"]
DOCS = m.docs_in(m.ROOT / "infra" / "k8s", m.ROOT / "infra" / "k8s-dev")


def deployed_images():
    """Images of every Deployment (the data stores are StatefulSets running public images)."""
    return {c["image"] for w in DOCS if w.kind == "Deployment" for c in m.pod_spec(w)["containers"]}


def test_skaffold_uses_the_v4beta14_schema_and_deploys_with_kubectl():
    assert SKAFFOLD["apiVersion"] == "skaffold/v4beta14"
    assert SKAFFOLD["kind"] == "Config"
    assert "kubectl" in SKAFFOLD["deploy"]


def test_skaffold_builds_locally_without_pushing():
    assert SKAFFOLD["build"]["local"]["push"] is False


def test_skaffold_builds_exactly_one_artifact_per_service():
    images = [a["image"] for a in ARTIFACTS]
    assert sorted(images) == sorted(m.image_name(s) for s in m.SERVICES)


def test_skaffold_artifacts_are_the_images_the_deployments_run():
    assert {a["image"] for a in ARTIFACTS} == deployed_images()


@pytest.mark.parametrize("artifact", ARTIFACTS, ids=lambda a: a["image"])
def test_each_artifact_builds_the_root_dockerfile_with_its_service_as_build_arg(artifact):
    assert artifact.get("context", ".") == "."
    docker = artifact["docker"]
    assert docker.get("dockerfile", "Dockerfile") == "Dockerfile"
    assert (m.ROOT / "Dockerfile").exists()
    assert docker["buildArgs"] == {"SERVICE": artifact["image"].removeprefix("ticketing/")}


def test_skaffold_deploys_the_base_and_dev_manifests_but_not_prod():
    globs = SKAFFOLD["manifests"]["rawYaml"]
    matched = {m.ROOT / p for g in globs for p in glob.glob(g, root_dir=m.ROOT)}
    expected = set(m.manifest_files(m.ROOT / "infra" / "k8s", m.ROOT / "infra" / "k8s-dev"))
    assert expected <= matched
    assert not any(fnmatch.fnmatch("infra/k8s-prod/ingress.yaml", g) for g in globs)


def service_members():
    """Workspace members that are deployed: not the shared library, not the crates that only test
    the system (they say so with `[package.metadata.ticketing] role = "test"`)."""
    members = m.workspace_members()
    return [name for name in members if name != "common" and crate_role(name) != "test"]


def crate_role(name):
    manifest = m.ROOT / name / "Cargo.toml"
    if not manifest.exists():
        return None
    with manifest.open("rb") as f:
        data = tomllib.load(f)
    return data.get("package", {}).get("metadata", {}).get("ticketing", {}).get("role")


def test_every_service_crate_in_the_workspace_has_manifests_a_workflow_and_an_artifact():
    members = service_members()
    assert members or not m.workspace(), "Cargo.toml lists no service crate"
    images = {a["image"] for a in ARTIFACTS}
    problems = []
    for name in members:
        if name not in m.SERVICES:
            problems.append(f"{name}: a workspace member that is not one of {m.SERVICES}")
            continue
        if m.find(m.base_docs(), "Deployment", m.deployment_name(name)) is None:
            problems.append(f"{name}: no Deployment in infra/k8s")
        if not (m.ROOT / ".github" / "workflows" / f"tests-{name}.yml").exists():
            problems.append(f"{name}: no .github/workflows/tests-{name}.yml")
        if m.image_name(name) not in images:
            problems.append(f"{name}: no skaffold artifact")
    assert not problems, "\n".join(problems)


def test_services_with_manifests_but_no_crate_yet_are_reported():
    """Informational: manifests may run ahead of the crates; this lists them and always passes."""
    members = set(m.workspace_members())
    ahead = [s for s in m.SERVICES if s not in members]
    if ahead:
        warnings.warn(f"deployed but not yet workspace members: {', '.join(ahead)}", stacklevel=1)


def test_every_service_directory_with_a_crate_is_a_workspace_member():
    members = set(m.workspace_members())
    stray = [s for s in m.SERVICES if (m.ROOT / s / "Cargo.toml").exists() and s not in members]
    assert not stray, f"crates missing from [workspace] members: {stray}"


def profile(name):
    (found,) = [p for p in SKAFFOLD.get("profiles", []) if p["name"] == name]
    return found


def test_the_ha_profile_deploys_the_production_topology_with_the_dev_ingress_instead_of_the_base():
    ha = profile("ha")
    assert set(ha) == {"name", "manifests"}, "the profile only swaps the manifests; builds stay the same"
    globs = ha["manifests"]["rawYaml"]
    matched = {m.ROOT / p for g in globs for p in glob.glob(g, root_dir=m.ROOT)}
    expected = set(m.manifest_files(m.ROOT / "infra" / "k8s-ha", m.ROOT / "infra" / "k8s-dev"))
    assert matched == expected
    # The same images as the base: every artifact is deployed, nothing else is built.
    docs = m.docs_in(m.ROOT / "infra" / "k8s-ha")
    images = {c["image"] for w in docs if w.kind == "Deployment" for c in m.pod_spec(w)["containers"]}
    assert {a["image"] for a in ARTIFACTS} == images
