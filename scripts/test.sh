#!/usr/bin/env bash
# The test command: real infrastructure on loopback, then every test of the workspace.
#
#   scripts/test.sh [CARGO TEST ARGS...]      e.g. scripts/test.sh -p auth
#                                                  scripts/test.sh -p auth -- --nocapture
#
# 1. scripts/infra.sh up ferretdb nats redis, and its env (MONGO_URL, NATS_URL, REDIS_URL);
# 2. cargo test --workspace [--locked] ARGS (RUST_LOG unset, RUST_BACKTRACE=1);
#    --workspace is left out when ARGS already select packages (-p/--package/--exclude/...);
# 3. python3 -m pytest -q tests-infra, when that directory exists (its own venv in .data/).
# Exits non-zero if anything failed; prints a one-line summary.  The infrastructure is left
# running for the next run, except when CI is set (then it is stopped on exit).
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"

if [[ -n "${CI:-}" ]]; then
  trap 'log "CI is set: stopping the infrastructure"; bash "$ROOT/scripts/infra.sh" down || true' EXIT
fi

started=$SECONDS
if ! bash "$ROOT/scripts/infra.sh" up ferretdb nats redis; then
  echo "SUMMARY: FAIL | infrastructure did not come up (see the error above) | total $((SECONDS - started))s"
  exit 1
fi
eval "$(bash "$ROOT/scripts/infra.sh" env)"
export MONGO_URL NATS_URL REDIS_URL

unset RUST_LOG
export RUST_BACKTRACE=1

# ------------------------------------------------------------------ cargo test
cargo_args=(test)
select_packages=no
for arg in "$@"; do
  [[ "$arg" == "--" ]] && break
  case "$arg" in
    -p | -p* | --package | --package=* | --workspace | --all | --exclude | --exclude=* | --manifest-path | --manifest-path=*)
      select_packages=yes
      ;;
  esac
done
[[ "$select_packages" == no ]] && cargo_args+=(--workspace)
[[ -f Cargo.lock ]] && cargo_args+=(--locked)
cargo_args+=("$@")

log "running: cargo ${cargo_args[*]} (MONGO_URL=$MONGO_URL NATS_URL=$NATS_URL REDIS_URL=$REDIS_URL)"
cargo_start=$SECONDS
cargo_rc=0
cargo "${cargo_args[@]}" || cargo_rc=$?
cargo_time=$((SECONDS - cargo_start))
if ((cargo_rc == 0)); then
  cargo_summary="cargo test: PASS (${cargo_time}s)"
else
  cargo_summary="cargo test: FAIL exit $cargo_rc (${cargo_time}s)"
fi

# ------------------------------------------------------------------ tests-infra (pytest)
py_rc=0
py_summary="tests-infra: none"
if [[ -d tests-infra ]]; then
  n_tests="$(find tests-infra -type f \( -name 'test_*.py' -o -name '*_test.py' \) | wc -l)"
  py_start=$SECONDS
  if [[ -f tests-infra/run.sh ]]; then
    # tests-infra/run.sh installs what its checks need (venv, linters), then runs pytest -q tests-infra.
    log "running: tests-infra/run.sh = python3 -m pytest -q tests-infra, after its own setup ($n_tests test files)"
    bash tests-infra/run.sh || py_rc=$?
  else
    venv="$DATA_DIR/venv-tests-infra"
    req="tests-infra/requirements.txt"
    stamp_want="pytest"
    [[ -f "$req" ]] && stamp_want+=" $(sha256sum "$req" | cut -d' ' -f1)"
    if [[ ! -x "$venv/bin/python" ]] || [[ "$(cat "$venv/.stamp" 2>/dev/null)" != "$stamp_want" ]]; then
      pip_log="$LOG_DIR/install-tests-infra-venv.log"
      log "creating the tests-infra venv ${venv#"$ROOT"/} (pytest, plus $req if present; log ${pip_log#"$ROOT"/})"
      rm -rf "$venv"
      {
        python3 -m venv "$venv" &&
          "$venv/bin/python" -m pip install -q --disable-pip-version-check pytest &&
          if [[ -f "$req" ]]; then "$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$req"; fi
      } >"$pip_log" 2>&1 || fail_with_log "$pip_log" "could not create the tests-infra venv"
      printf '%s' "$stamp_want" >"$venv/.stamp"
    fi
    log "running: python3 -m pytest -q tests-infra ($n_tests test files)"
    "$venv/bin/python" -m pytest -q tests-infra || py_rc=$?
  fi
  py_time=$((SECONDS - py_start))
  if ((py_rc == 5 && n_tests == 0)); then
    py_rc=0
    py_summary="tests-infra: no tests"
  elif ((py_rc == 0)); then
    py_summary="tests-infra: PASS (${py_time}s)"
  else
    py_summary="tests-infra: FAIL exit $py_rc (${py_time}s)"
  fi
fi

# ------------------------------------------------------------------ summary
overall=PASS
((cargo_rc == 0 && py_rc == 0)) || overall=FAIL
if [[ -n "${CI:-}" ]]; then infra_note="infra stopped (CI)"; else infra_note="infra left running (scripts/infra.sh down)"; fi
echo "SUMMARY: $overall | $cargo_summary | $py_summary | total $((SECONDS - started))s | $infra_note"
[[ "$overall" == PASS ]]
