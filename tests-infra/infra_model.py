"""What the infrastructure checks know about the repository.

Three sources, read fresh by every test run:
  * the contract (SERVICES, ENV_CONTRACT below): the six services and the environment variables each
    one reads, as agreed for the Rust port;
  * the Rust sources, once they exist: `<service>/src/settings.rs` and `common/src/settings.rs` name
    every variable as a string literal (`env.require("JWT_KEY")`, `env.or("PORT", "3000")`, ...).
    For each service whose settings.rs exists the parsed names replace the contract table, so the
    checks follow the code as it grows;
  * the files under test: Kubernetes manifests, skaffold.yaml, workflows, Dockerfile, nginx.conf.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent

SERVICES = ("auth", "tickets", "orders", "payments", "expiration", "client")
# Services with a MongoDB of their own.
DATA_SERVICES = ("auth", "tickets", "orders", "payments")
# The path prefix each HTTP service owns behind the ingress ("/" is the catch-all).
ROUTES = {
    "/api/payments": "payments",
    "/api/users": "auth",
    "/api/tickets": "tickets",
    "/api/orders": "orders",
    "/": "client",
}
# Where infra/local/nginx.conf finds each service on the developer's machine.
LOCAL_PORTS = {3000: "client", 3001: "auth", 3002: "tickets", 3003: "orders", 3004: "payments"}
REPLICAS = {"auth": 1, "tickets": 2, "orders": 2, "payments": 1, "expiration": 1, "client": 1}
HTTP_PORT = 3000
# Where each service serves GET /metrics (METRICS_PORT), scraped by Prometheus from the pod.
METRICS_PORT = 9464

# Secrets and config maps the manifests may reference, with the keys the docs tell people to create.
SECRET_REFS = {"jwt-secret": {"JWT_KEY"}, "stripe-secret": {"STRIPE_KEY"},
               "client-address-secret": {"CLIENT_ADDRESS_KEY"}, "csrf-secret": {"CSRF_KEY"}}
CONFIG_MAP_REFS = {"stripe-config": {"STRIPE_PUBLISHABLE_KEY"}}
# Variables whose value is a credential: never a literal in a manifest.
SECRET_VARS = {"JWT_KEY": ("jwt-secret", "JWT_KEY"), "STRIPE_KEY": ("stripe-secret", "STRIPE_KEY"),
               "CLIENT_ADDRESS_KEY": ("client-address-secret", "CLIENT_ADDRESS_KEY"),
               "CSRF_KEY": ("csrf-secret", "CSRF_KEY")}
# Variables that are not secret but must never hold a committed key value either.
KEY_VARS = {"STRIPE_PUBLISHABLE_KEY"}

R, O = True, False  # required, optional
_COMMON = {"RUST_LOG": O, "PORT": O, "HOST": O, "METRICS_PORT": O}
_MONGO = {"MONGO_URL": R, "MONGO_DB": O}
_NATS = {"NATS_URL": R, "NATS_STREAM": O, "NATS_SUBJECT_PREFIX": O}
_JWT = {"JWT_KEY": R}
ENV_CONTRACT: dict[str, dict[str, bool]] = {
    "auth": {**_COMMON, **_JWT, **_MONGO, "JWT_TTL_SECONDS": O, "COOKIE_SECURE": O, "CLIENT_ADDRESS_KEY": O},
    "tickets": {**_COMMON, **_JWT, **_MONGO, **_NATS},
    "orders": {**_COMMON, **_JWT, **_MONGO, **_NATS, "EXPIRATION_WINDOW_SECONDS": O},
    "payments": {**_COMMON, **_JWT, **_MONGO, **_NATS, "STRIPE_KEY": R, "STRIPE_API_BASE": O},
    "expiration": {**_COMMON, **_NATS, "REDIS_URL": R},
    "client": {**_COMMON, "API_BASE_URL": R, "STRIPE_PUBLISHABLE_KEY": O, "CLIENT_ADDRESS_KEY": O,
               "CSRF_KEY": R, "COOKIE_SECURE": O},
}
# Read by every service without its settings.rs naming them: RUST_LOG by tracing's EnvFilter itself,
# OTEL_EXPORTER_OTLP_ENDPOINT by common::telemetry (TracingSettings) when `run_service` starts.
IMPLICIT_ENV = {"RUST_LOG": O, "OTEL_EXPORTER_OTLP_ENDPOINT": O}
# Variables a manifest may set ahead of the code, each with what is waiting for it. Tolerated by the
# "sets only variables its service reads" check only while no settings.rs reads them; test_ha.py
# reports (xfail) each one still unread.
PENDING_ENV: dict[str, str] = {}

# Backing services a crate's tests need, by the variable that points at them.
BACKING_BY_VAR = {"MONGO_URL": "mongo", "NATS_URL": "nats", "REDIS_URL": "redis"}


# --------------------------------------------------------------------------------------------
# YAML


@dataclasses.dataclass(frozen=True)
class Doc:
    path: Path
    index: int
    body: dict

    @property
    def kind(self) -> str:
        return self.body.get("kind", "")

    @property
    def name(self) -> str:
        return (self.body.get("metadata") or {}).get("name", "")

    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}#{self.index} ({self.kind} {self.name})"


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


IGNORED_DIRS = {".git", ".data", "target", "node_modules", "bench-results", "e2e-artifacts", "__pycache__",
                ".pytest_cache", ".venv"}


def repo_files(*suffixes: str) -> list[Path]:
    """Files of the working tree with one of the suffixes, skipping build output and local data."""
    found = []
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = sorted(d for d in dirs if d not in IGNORED_DIRS)  # never descend into target/ etc.
        for name in files:
            path = Path(folder) / name
            if (not suffixes or name.endswith(suffixes)) and path.is_file():
                found.append(path)
    return sorted(found)


def manifest_dirs() -> list[Path]:
    return [ROOT / "infra" / "k8s", ROOT / "infra" / "k8s-dev", ROOT / "infra" / "k8s-prod",
            ROOT / "infra" / "k8s-ha"]


# The two complete sets of workloads, either of which is applied with one of the ingress folders:
# "base" (infra/k8s, one member per data store: a laptop cluster) and "ha" (infra/k8s-ha, the
# production topology that survives losing a node: replica sets, a NATS cluster, 2+ replicas).
TARGETS = {"base": "k8s", "ha": "k8s-ha"}
INGRESS_DIRS = ("k8s-dev", "k8s-prod")


def target_dir(target: str) -> Path:
    return ROOT / "infra" / TARGETS[target]


def target_docs(target: str) -> list[Doc]:
    return docs_in(target_dir(target))


@functools.cache
def all_target_docs() -> dict[str, list[Doc]]:
    """Every target's documents, read once per test run."""
    return {target: target_docs(target) for target in TARGETS}


def target_deployment(service: str, target: str = "base") -> Doc:
    """The Deployment of `service` in `target`'s folder (an assertion names what is missing)."""
    doc = find(all_target_docs()[target], "Deployment", deployment_name(service))
    assert doc is not None, f"infra/{TARGETS[target]} has no Deployment {deployment_name(service)}"
    return doc


def manifest_files(*dirs: Path) -> list[Path]:
    dirs = dirs or tuple(manifest_dirs())
    return sorted(p for d in dirs if d.is_dir() for p in d.iterdir() if p.suffix in (".yaml", ".yml"))


def load_docs(path: Path) -> list[Doc]:
    with path.open() as f:
        return [Doc(path, i, body) for i, body in enumerate(yaml.safe_load_all(f)) if body is not None]


def docs_in(*dirs: Path) -> list[Doc]:
    return [doc for path in manifest_files(*dirs) for doc in load_docs(path)]


def base_docs() -> list[Doc]:
    return docs_in(ROOT / "infra" / "k8s")


def find(docs: list[Doc], kind: str, name: str) -> Doc | None:
    matches = [d for d in docs if d.kind == kind and d.name == name]
    return matches[0] if len(matches) == 1 else None


def deployment_name(service: str) -> str:
    return f"{service}-depl"


def service_name(service: str) -> str:
    return f"{service}-srv"


def image_name(service: str) -> str:
    return f"ticketing/{service}"


def pod_spec(doc: Doc) -> dict:
    return doc.body["spec"]["template"]["spec"]


def container(doc: Doc, name: str | None = None) -> dict:
    containers = pod_spec(doc)["containers"]
    if name is None:
        assert len(containers) == 1, f"{doc.where()} should run exactly one container"
        return containers[0]
    (match,) = [c for c in containers if c["name"] == name]
    return match


def container_port(c: dict, port) -> int | None:
    """Resolve a probe/targetPort reference (number or name) against a container's ports."""
    for p in c.get("ports", []):
        if port == p.get("name") or port == p.get("containerPort"):
            return p["containerPort"]
    return None


def selects(service_doc: Doc, workload: Doc) -> bool:
    selector = service_doc.body["spec"].get("selector") or {}
    labels = workload.body["spec"]["template"]["metadata"].get("labels") or {}
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def env_entries(c: dict) -> dict[str, dict]:
    return {e["name"]: e for e in c.get("env", [])}


def workloads(docs: list[Doc]) -> list[Doc]:
    return [d for d in docs if d.kind in ("Deployment", "StatefulSet")]


def pod_workloads(docs: list[Doc]) -> list[Doc]:
    """Everything that runs pods from a template: the workloads and the one-off Jobs (bootstraps)."""
    return [d for d in docs if d.kind in ("Deployment", "StatefulSet", "Job")]


# --------------------------------------------------------------------------------------------
# Cargo workspace


def workspace() -> dict:
    path = ROOT / "Cargo.toml"
    if not path.exists():
        return {}
    return tomllib.loads(path.read_text()).get("workspace", {})


def workspace_members() -> list[str]:
    return list(workspace().get("members", []))


# --------------------------------------------------------------------------------------------
# Rust settings: which environment variables a service reads.

_ENV_NAME = re.compile(r"^[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)*$")


@dataclasses.dataclass(frozen=True)
class Token:
    kind: str  # "ident", "str", "punct"
    text: str


def rust_tokens(source: str) -> list[Token]:
    """A small Rust lexer: identifiers, string literals (plain, raw, byte) and punctuation.

    Comments, char literals and lifetimes are dropped; braces inside strings never count.
    """
    tokens: list[Token] = []
    i, n = 0, len(source)
    while i < n:
        ch = source[i]
        if ch.isspace():
            i += 1
        elif source.startswith("//", i):
            end = source.find("\n", i)
            i = n if end < 0 else end + 1
        elif source.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if source.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif source.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    i += 1
        elif (m := re.compile(r'b?r(#*)"').match(source, i)) is not None:
            closing = '"' + m.group(1)
            end = source.find(closing, m.end())
            end = n if end < 0 else end
            tokens.append(Token("str", source[m.end():end]))
            i = end + len(closing)
        elif ch == '"' or source.startswith('b"', i):
            j = i + (2 if ch == "b" else 1)
            buf = []
            while j < n and source[j] != '"':
                if source[j] == "\\":
                    buf.append(source[j:j + 2])
                    j += 2
                else:
                    buf.append(source[j])
                    j += 1
            tokens.append(Token("str", "".join(buf)))
            i = j + 1
        elif ch == "'":
            # char literal ('x', '\n', '\u{1F600}') or lifetime ('a): skip either
            m = re.compile(r"'(?:\\u\{[0-9a-fA-F]+\}|\\.|[^\\'])'").match(source, i)
            if m:
                i = m.end()
            else:
                m = re.compile(r"'[A-Za-z_][A-Za-z0-9_]*").match(source, i)
                i = m.end() if m else i + 1
        elif ch.isalpha() or ch == "_":
            m = re.compile(r"[A-Za-z_][A-Za-z0-9_]*").match(source, i)
            tokens.append(Token("ident", m.group()))
            i = m.end()
        else:
            tokens.append(Token("punct", ch))
            i += 1
    return tokens


def _skip_item(tokens: list[Token], i: int) -> int:
    """Index just past the item starting at i: up to its balanced {...} block or a top-level ';'."""
    return _skip(tokens, i, item=True)


def _skip_balanced(tokens: list[Token], i: int) -> int:
    """Index just past the bracket group opened at tokens[i]."""
    return _skip(tokens, i, item=False)


def _skip(tokens: list[Token], i: int, item: bool) -> int:
    """Walks brackets from i; stops after the group that closes depth 0 (an item: only a '}'
    closing it, or a ';' at depth 0)."""
    depth = 0
    while i < len(tokens):
        t = tokens[i]
        if t.kind == "punct" and t.text in "{([":
            depth += 1
        elif t.kind == "punct" and t.text in "})]":
            depth -= 1
            if depth == 0 and (t.text == "}" or not item):
                return i + 1
        elif item and t.kind == "punct" and t.text == ";" and depth == 0:
            return i + 1
        i += 1
    return i


def strip_test_code(tokens: list[Token]) -> list[Token]:
    """Drop every item marked #[cfg(test)] (the unit-test modules) and #[test] functions."""
    out: list[Token] = []
    i = 0
    while i < len(tokens):
        if tokens[i].text == "#" and i + 1 < len(tokens) and tokens[i + 1].text == "[":
            end = _skip_balanced(tokens, i + 1)  # the attribute's [...]
            attr = "".join(t.text for t in tokens[i + 2:end - 1])
            if attr in ("cfg(test)", "test") or attr.startswith("tokio::test"):
                j = end
                # further attributes on the same item
                while j + 1 < len(tokens) and tokens[j].text == "#" and tokens[j + 1].text == "[":
                    j = _skip_balanced(tokens, j + 1)
                i = _skip_item(tokens, j)
                continue
        out.append(tokens[i])
        i += 1
    return out


@dataclasses.dataclass
class EnvReads:
    """Variables named in a piece of Rust code: name -> required?"""

    names: dict[str, bool] = dataclasses.field(default_factory=dict)

    def add(self, name: str, required: bool) -> None:
        self.names[name] = self.names.get(name, False) or required

    def merge(self, other: "EnvReads") -> None:
        for name, required in other.names.items():
            self.add(name, required)


def env_reads(tokens: list[Token]) -> EnvReads:
    """Every SCREAMING_SNAKE string literal is a variable name; it is required when the call that
    receives it is named `require...` (`env.require("JWT_KEY")`), optional otherwise
    (`env.optional(..)`, `env.or(..)`, `env.parse_or(..)`, `seconds_or(&env, "X", 60)`, ...)."""
    reads = EnvReads()
    callers: list[str | None] = []  # for each open parenthesis, the identifier just before it
    for i, t in enumerate(tokens):
        if t.kind == "punct" and t.text == "(":
            prev = tokens[i - 1] if i else None
            callers.append(prev.text if prev is not None and prev.kind == "ident" else None)
        elif t.kind == "punct" and t.text == ")":
            if callers:
                callers.pop()
        elif t.kind == "str" and _ENV_NAME.match(t.text) and (len(t.text) > 3 or t.text in ("PORT", "HOST")):
            caller = callers[-1] if callers else None
            reads.add(t.text, bool(caller and caller.startswith("require")))
    return reads


def top_level_groups(tokens: list[Token]) -> dict[str, list[Token]]:
    """Top-level `impl X { .. }` and `fn x(..) { .. }` bodies of a settings module, by X / x."""
    groups: dict[str, list[Token]] = {}
    i = 0
    while i < len(tokens):
        t = tokens[i]
        if t.kind == "ident" and t.text in ("impl", "fn", "struct", "enum", "mod", "use", "const", "static",
                                            "type", "trait"):
            end = _skip_item(tokens, i)
            if t.text == "impl":
                # impl [<..>] [Trait for] Type { .. }: the type is the last identifier before '{'
                brace = next(k for k in range(i, end) if tokens[k].text == "{")
                idents, angle = [], 0
                for x in tokens[i + 1:brace]:
                    angle += {"<": 1, ">": -1}.get(x.text, 0)
                    if x.kind == "ident" and angle == 0:
                        idents = [] if x.text == "for" else idents + [x.text]
                name = next((x for x in idents if x not in ("where", "dyn")), None)
            elif t.text == "fn":
                name = tokens[i + 1].text
            else:
                name = None
            if name:
                groups.setdefault(name, []).extend(tokens[i:end])
            i = end
        else:
            i += 1
    return groups


def mentions(tokens: list[Token], names) -> set[str]:
    names = set(names)
    return {t.text for t in tokens if t.kind == "ident" and t.text in names}


@functools.cache
def common_settings_groups() -> dict[str, EnvReads]:
    """Variables each item of common/src/settings.rs reads, including what the items it calls read."""
    path = ROOT / "common" / "src" / "settings.rs"
    if not path.exists():
        return {}
    tokens = strip_test_code(rust_tokens(path.read_text()))
    raw = {name: body for name, body in top_level_groups(tokens).items() if name != "Env"}
    result: dict[str, EnvReads] = {}

    def resolve(name: str, seen: frozenset) -> EnvReads:
        reads = env_reads(raw[name])
        for other in mentions(raw[name], raw) - {name} - seen:
            reads.merge(resolve(other, seen | {name}))
        return reads

    for name in raw:
        result[name] = resolve(name, frozenset({name}))
    return result


def settings_path(service: str) -> Path:
    return ROOT / service / "src" / "settings.rs"


def parsed_env(service: str) -> dict[str, bool] | None:
    """Variables the service's code reads (name -> required), or None while settings.rs is missing."""
    path = settings_path(service)
    if not path.exists():
        return None
    tokens = strip_test_code(rust_tokens(path.read_text()))
    reads = env_reads(tokens)
    groups = common_settings_groups()
    for name in mentions(tokens, groups):
        reads.merge(groups[name])
    for name, required in IMPLICIT_ENV.items():
        reads.add(name, required)
    return reads.names


def service_env(service: str) -> tuple[dict[str, bool], str]:
    """(variables read, where that knowledge comes from)."""
    parsed = parsed_env(service)
    if parsed is not None:
        return parsed, f"parsed from {rel(settings_path(service))}"
    return ENV_CONTRACT[service], "contract table (settings.rs not written yet)"


# --------------------------------------------------------------------------------------------
# Ingress paths


def route_prefix(path: str) -> str:
    """The plain prefix of an ingress regex path or an nginx location: /api/users/?(.*) -> /api/users."""
    p = path.strip().lstrip("^")
    suffixes = ("$", "/?(.*)", "(/.*)?", "(/|$)(.*)", "(/|$)", "/(.*)", "(.*)", "/.*", ".*", "/?", "/")
    changed = True
    while changed:
        changed = False
        for suffix in suffixes:
            if p.endswith(suffix):
                p, changed = p[: -len(suffix)], True
                break
    return p or "/"


def ingress_routes(doc: Doc) -> dict[str, dict[str, tuple[str, int, str]]]:
    """host -> {prefix: (service name, port number, raw path)}"""
    routes: dict[str, dict[str, tuple[str, int, str]]] = {}
    for rule in doc.body["spec"].get("rules", []):
        table = routes.setdefault(rule.get("host", ""), {})
        for p in rule.get("http", {}).get("paths", []):
            svc = p["backend"]["service"]
            table[route_prefix(p["path"])] = (svc["name"], svc["port"].get("number"), p["path"])
    return routes


# --------------------------------------------------------------------------------------------
# nginx.conf of the local app


def nginx_locations(text: str) -> dict[str, int]:
    """prefix -> local port that location proxies to (resolving `upstream` blocks)."""
    text = re.sub(r"#[^\n]*", "", text)
    upstreams: dict[str, int] = {}
    for m in re.finditer(r"upstream\s+([\w.-]+)\s*\{([^}]*)\}", text):
        ports = re.findall(r"server\s+[\w.\[\]:-]*?:(\d+)", m.group(2))
        if ports:
            upstreams[m.group(1)] = int(ports[0])
    locations: dict[str, int] = {}
    for m in re.finditer(r"location\s+(?:(=|~\*|~|\^~)\s+)?(\S+)\s*\{", text):
        # the location's own block (nested braces are not used in these configs)
        body_start = m.end()
        depth, j = 1, body_start
        while j < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            j += 1
        body = text[body_start:j - 1]
        pm = re.search(r"proxy_pass\s+https?://([^/;\s]+)", body)
        if not pm:
            continue
        target = pm.group(1)
        port = None
        if target in upstreams:
            port = upstreams[target]
        else:
            hp = re.match(r".*:(\d+)$", target)
            port = int(hp.group(1)) if hp else None
        if port is not None:
            locations[route_prefix(m.group(2).strip('"'))] = port
    return locations


# --------------------------------------------------------------------------------------------
# Workflows


def load_workflow(path: Path) -> dict:
    data = yaml.safe_load(path.read_text())
    # YAML 1.1 reads the key `on` as the boolean True.
    if True in data and "on" not in data:
        data["on"] = data.pop(True)
    return data


def steps_run_text(job: dict) -> str:
    return "\n".join(step.get("run", "") for step in job.get("steps", []))


# --------------------------------------------------------------------------------------------
# Linters


def tool(name: str) -> str | None:
    """A linter binary: $<NAME> (set by run.sh), next to this Python (the venv's bin), .data/bin, PATH."""
    candidates = [os.environ.get(name.upper()), str(Path(sys.executable).parent / name),
                  str(ROOT / ".data" / "bin" / name), shutil.which(name)]
    return next((c for c in candidates if c and Path(c).is_file() and os.access(c, os.X_OK)), None)


def actionlint_version() -> str:
    match = re.search(r"^ACTIONLINT_VERSION=(\S+)$", (ROOT / "tests-infra" / "run.sh").read_text(), re.M)
    assert match, "tests-infra/run.sh pins ACTIONLINT_VERSION"
    return match.group(1)


def ensure_actionlint() -> str:
    """actionlint at the version run.sh pins, built with `go install` into .data/bin when missing."""
    version = actionlint_version()
    found = tool("actionlint")
    if found:
        reported = subprocess.run([found, "-version"], capture_output=True, text=True).stdout.split("\n")[0]
        if reported == version:
            return found
    go = shutil.which("go") or ("/usr/local/go/bin/go" if Path("/usr/local/go/bin/go").exists() else None)
    assert go, "actionlint is missing and there is no Go toolchain to build it (see tests-infra/run.sh)"
    gobin = ROOT / ".data" / "bin"
    gobin.mkdir(parents=True, exist_ok=True)
    subprocess.run([go, "install", f"github.com/rhysd/actionlint/cmd/actionlint@{version}"],
                   env={**os.environ, "GOBIN": str(gobin)}, check=True)
    return str(gobin / "actionlint")
