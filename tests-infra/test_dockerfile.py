"""The one Dockerfile builds any service into a small non-root image, caching dependencies once."""

import fnmatch
import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

import infra_model as m

DOCKERFILE = (m.ROOT / "Dockerfile").read_text()


def instructions(text):
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    logical, buf = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if not buf and (not stripped or stripped.startswith("#")):
            continue
        if buf and stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            buf += stripped[:-1] + " "
            continue
        buf += stripped
        keyword, _, rest = buf.partition(" ")
        logical.append((keyword.upper(), rest.strip()))
        buf = ""
    return logical


def stages():
    """stage name -> its instructions (FROM first); the global ARGs under the key None."""
    result, current = {None: []}, None
    for keyword, rest in instructions(DOCKERFILE):
        if keyword == "FROM":
            match = re.match(r"(\S+)(?:\s+AS\s+(\S+))?", rest, re.IGNORECASE)
            current = match.group(2) or match.group(1)
            result[current] = []
        result[current].append((keyword, rest))
    return result


STAGES = stages()
RUNTIME = list(STAGES)[-1]


def global_arg(name):
    for keyword, rest in STAGES[None]:
        if keyword == "ARG" and rest.startswith(f"{name}="):
            return rest.split("=", 1)[1]
    return None


def test_hadolint_finds_no_problem_in_the_dockerfile():
    hadolint = m.tool("hadolint")
    assert hadolint, "hadolint not found: run the checks through tests-infra/run.sh"
    done = subprocess.run([hadolint, "--no-color", "Dockerfile"], cwd=m.ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_runtime_image_is_distroless_and_runs_the_binary_as_a_numeric_non_root_user():
    steps = STAGES[RUNTIME]
    assert steps[0] == ("FROM", "gcr.io/distroless/cc-debian12:nonroot AS runtime")
    user = [rest for keyword, rest in steps if keyword == "USER"]
    assert user and re.fullmatch(r"[1-9]\d*(:[1-9]\d*)?", user[-1]), "USER must be numeric and not root"
    assert ("ENTRYPOINT", '["/app/service"]') in steps
    assert ("WORKDIR", "/app") in steps
    copies = [rest for keyword, rest in steps if keyword == "COPY"]
    assert copies == ["--from=builder /out/app/ /app/"], "the runtime gets the staged /out/app and nothing else"
    assert ("EXPOSE", str(m.HTTP_PORT)) in steps


def test_the_service_argument_comes_after_the_dependency_cook_so_all_images_share_that_layer():
    steps = STAGES["builder"]
    cook = next(i for i, (k, r) in enumerate(steps) if k == "RUN" and "cargo chef cook" in r)
    arg = next(i for i, (k, r) in enumerate(steps) if k == "ARG" and r == "SERVICE")
    build = next(i for i, (k, r) in enumerate(steps) if k == "RUN" and "cargo build" in r)
    assert cook < arg < build
    assert "--release" in steps[cook][1] and "--locked" in steps[cook][1]
    assert all("SERVICE" not in rest for _, rest in steps[:arg]), "nothing before the cook may depend on SERVICE"


def test_the_cargo_configuration_reaches_the_dependency_cook_so_its_flags_do_not_rebuild_that_layer():
    steps = STAGES["builder"]
    cook = next(i for i, (k, r) in enumerate(steps) if k == "RUN" and "cargo chef cook" in r)
    copy = next(i for i, (k, r) in enumerate(steps) if k == "COPY" and r == ".cargo .cargo")
    assert copy < cook
    config = tomllib.loads((m.ROOT / ".cargo" / "config.toml").read_text())
    flags = [f for section in config["target"].values() for f in section.get("rustflags", [])]
    assert "link-arg=-Wl,-z,pack-relative-relocs" in flags


def test_the_builder_compiles_only_the_chosen_binary_in_release_mode_and_stages_it():
    (run,) = [r for k, r in STAGES["builder"] if k == "RUN" and "cargo build" in r]
    assert 'cargo build --release --locked -p "${SERVICE}" --bin "${SERVICE}"' in run
    assert 'cp "target/release/${SERVICE}" /out/app/service' in run
    assert '${SERVICE:?' in run, "a build without SERVICE must fail with a message"
    assert 'if [ -d "${SERVICE}/static" ]' in run, "a service's static folder is copied when it exists"


def test_the_static_folder_staging_works_with_and_without_a_static_folder(tmp_path):
    """Run the builder's staging shell code (minus cargo) in a scratch workspace."""
    (run,) = [r for k, r in STAGES["builder"] if k == "RUN" and "cargo build" in r]
    script = re.sub(r"cargo build[^&]*&&", "", run).replace("/out", str(tmp_path / "out"))
    for service, has_static in (("client", True), ("auth", False)):
        work = tmp_path / service
        (work / "target" / "release").mkdir(parents=True)
        (work / "target" / "release" / service).write_text("binary")
        if has_static:
            (work / service / "static").mkdir(parents=True)
            (work / service / "static" / "site.css").write_text("body{}")
        shutil.rmtree(tmp_path / "out", ignore_errors=True)
        done = subprocess.run(["sh", "-c", script], cwd=work, env={"SERVICE": service, "PATH": os.environ["PATH"]},
                              capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        assert (tmp_path / "out" / "app" / "service").read_text() == "binary"
        assert (tmp_path / "out" / "app" / service / "static" / "site.css").exists() == has_static


def toolchain_versions():
    found = {"Dockerfile RUST_VERSION": global_arg("RUST_VERSION")}
    for path in sorted((m.ROOT / ".github" / "workflows").glob("*.yml")):
        for version in re.findall(r"dtolnay/rust-toolchain@([\w.]+)", path.read_text()):
            found[m.rel(path)] = version
    toolchain = m.ROOT / "rust-toolchain.toml"
    if toolchain.exists():
        found["rust-toolchain.toml"] = tomllib.loads(toolchain.read_text())["toolchain"]["channel"]
    return found


def test_images_and_ci_use_the_same_pinned_rust_toolchain():
    versions = toolchain_versions()
    exact = {v for v in versions.values() if v and v.count(".") == 2}
    assert exact == {"1.95.0"}, f"Dockerfile and workflows pin Rust 1.95.0 alike: {versions}"
    assert all(v and (v == "1.95" or v in exact) for v in versions.values()), versions
    assert re.fullmatch(r"\d+\.\d+\.\d+", global_arg("CARGO_CHEF_VERSION") or ""), "pin cargo-chef exactly"


def dockerignore_patterns():
    lines = (m.ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


def ignored(path, patterns):
    """Docker's rule: a pattern excludes a path if it matches it or one of its parent directories;
    the last matching pattern wins ('!' re-includes)."""
    parts = path.split("/")
    candidates = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    result = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern.lstrip("!").strip("/")
        if any(fnmatch.fnmatchcase(c, pat) or (pat.startswith("**/") and fnmatch.fnmatchcase(c, pat[3:]))
               for c in candidates):
            result = not negate
    return result


def test_the_docker_context_leaves_out_build_output_local_data_and_history():
    patterns = dockerignore_patterns()
    for path in ("target/release/auth", ".data/venv/bin/python", ".git/HEAD", "bench-results/x.json",
                 "e2e-artifacts/shot.png", "auth/target/debug/auth"):
        assert ignored(path, patterns), f"{path} would be sent to the Docker daemon"


def test_the_docker_context_keeps_everything_the_build_reads():
    patterns = dockerignore_patterns()
    needed = ["Cargo.toml", "Cargo.lock", "rust-toolchain.toml", "common/src/lib.rs"]
    for member in m.workspace_members() + list(m.SERVICES):
        needed += [f"{member}/Cargo.toml", f"{member}/src/main.rs", f"{member}/templates/page.html",
                   f"{member}/static/site.css", f"{member}/build.rs"]
    for path in needed:
        assert not ignored(path, patterns), f".dockerignore drops {path}, which the build needs"


def test_the_workspace_lock_file_exists_because_images_and_ci_build_with_locked():
    members_with_code = [mb for mb in m.workspace_members() if (m.ROOT / mb / "src").is_dir()]
    if not members_with_code:
        pytest.skip("no crate has code yet")
    assert (m.ROOT / "Cargo.lock").exists(), "commit Cargo.lock: the Dockerfile and workflows use --locked"
    assert "Cargo.lock" not in (m.ROOT / ".gitignore").read_text().split()


def test_the_dockerfile_build_context_is_the_repository_root():
    assert Path(m.ROOT / "Dockerfile").exists() and Path(m.ROOT / ".dockerignore").exists()
    assert any(k == "COPY" and r == ". ." for k, r in STAGES["planner"])
    assert any(k == "COPY" and r == ". ." for k, r in STAGES["builder"])
