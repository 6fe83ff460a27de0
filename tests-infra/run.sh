#!/usr/bin/env bash
# Static checks of the deployment and CI files (Kubernetes manifests, skaffold.yaml, workflows,
# Dockerfile). Sets up what they need, idempotently, then runs them:
#   .data/venv       Python venv with tests-infra/requirements.txt (reinstalled when that file changes)
#   .data/bin        actionlint, built from its Go module at the pinned version when missing
# Extra arguments go to pytest, e.g. tests-infra/run.sh -k ingress
set -euo pipefail

ACTIONLINT_VERSION=v1.7.12

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.data/venv"
bin="$root/.data/bin"
requirements="$root/tests-infra/requirements.txt"

python="${PYTHON:-python3}"
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "tests-infra needs Python 3.11 or newer (tomllib); set PYTHON=/path/to/python3.11+" >&2
    exit 1
fi

# A venv left by another machine or Python may be broken: recreate it then.
if ! "$venv/bin/python" -c 'import sys' >/dev/null 2>&1; then
    rm -rf "$venv"
    "$python" -m venv "$venv"
fi

stamp="$venv/.tests-infra-requirements.sha256"
want="$(sha256sum "$requirements" | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
    "$venv/bin/python" -m pip install --disable-pip-version-check --quiet --requirement "$requirements"
    echo "$want" >"$stamp"
fi

if [ "$("$bin/actionlint" -version 2>/dev/null | head -n1 || true)" != "$ACTIONLINT_VERSION" ]; then
    go="$(command -v go || true)"
    if [ -z "$go" ] && [ -x /usr/local/go/bin/go ]; then go=/usr/local/go/bin/go; fi
    if [ -z "$go" ]; then
        echo "actionlint is missing and no Go toolchain was found to build it" >&2
        exit 1
    fi
    mkdir -p "$bin"
    GOBIN="$bin" "$go" install "github.com/rhysd/actionlint/cmd/actionlint@$ACTIONLINT_VERSION"
fi

export ACTIONLINT="$bin/actionlint"
export SHELLCHECK="$venv/bin/shellcheck"
export HADOLINT="$venv/bin/hadolint"
cd "$root"
exec "$venv/bin/python" -m pytest -q tests-infra "$@"
