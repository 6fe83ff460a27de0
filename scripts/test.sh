#!/usr/bin/env bash
# The test command: real infrastructure on loopback, then every test of the workspace.
#
#   scripts/test.sh [CARGO TEST ARGS...]      e.g. scripts/test.sh -p auth
#                                                  scripts/test.sh -p auth -- --nocapture
#
# 1. scripts/infra.sh up ferretdb nats redis stripe-mock, and its env (MONGO_URL, NATS_URL,
#    REDIS_URL, and STRIPE_MOCK_URL for payments' PaymentIntent requests);
# 2. cargo test --workspace [--locked] ARGS (RUST_LOG unset, RUST_BACKTRACE=1); --workspace is
#    left out when ARGS already select packages (-p/--package/--exclude/...); e2e's browser test
#    is `test = false` (it needs the app: step 4), so this runs only e2e's unit tests;
# 3. python3 -m pytest -q tests-infra, when that directory exists (its own venv in .data/);
# 4. the browser tests, APP_SKIP_BUILD=1 APP_PROFILE=debug scripts/e2e.sh (the app on the debug
#    binaries step 2 built), when e2e/Cargo.toml exists, ARGS select no packages and step 2
#    passed.  E2E=0: never; E2E=1: also with selected packages or after a failed step 2.
# 5. the fault suite, FAULTS_SKIP_BUILD=1 scripts/faults.sh (its own private infrastructure: a
#    table of faults, then a short seeded chaos run; about 12 minutes), on the same conditions;
#    FAULTS=0 / FAULTS=1 as for E2E.
# 6. two replicas of every service (about 2 minutes): FAULTS_REPLICAS=2 scripts/faults.sh with the
#    baseline, orders SIGKILLed and the rolling restart (no request may fail), then a short
#    BENCH_REPLICAS=2 BENCH_APP_PROFILE=debug scripts/bench.sh through nginx; on the same
#    conditions, REPLICAS=0 / REPLICAS=1 as for E2E.
# Exits non-zero if anything failed; prints a one-line summary with each step's result and time.
# The infrastructure is left running for the next run, except when CI is set (then it is stopped
# on exit); the app started by step 4 is always stopped.
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"

if [[ -n "${CI:-}" ]]; then
  trap 'log "CI is set: stopping the infrastructure"; bash "$ROOT/scripts/infra.sh" down || true' EXIT
fi

# A fresh clone is built once: incremental caches would only double the disk it needs.
if [[ -n "${CI:-}" ]]; then export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"; fi

# A full disk shows up later as a linker killed by SIGBUS or a venv that cannot install pip:
# say so up front instead.  A fresh clone's run wrote 2.1 GiB to target/ and 0.3 GiB to .data/.
MIN_FREE_GIB=4
free_gib="$(df -P -BG "$ROOT" | awk 'NR == 2 { sub("G", "", $4); print $4 }')"
log "disk: ${free_gib} GiB free under $ROOT (a fresh clone's run needs about 3 GiB)"
if [[ -n "$free_gib" ]] && ((free_gib < MIN_FREE_GIB)); then
  warn "only ${free_gib} GiB free: the build may fail with 'Bus error' or 'No space left on device'"
fi

started=$SECONDS
if ! bash "$ROOT/scripts/infra.sh" up ferretdb nats redis stripe-mock; then
  echo "SUMMARY: FAIL | infrastructure did not come up (see the error above) | total $((SECONDS - started))s"
  exit 1
fi
infra_summary="infra: up ($((SECONDS - started))s)"
eval "$(bash "$ROOT/scripts/infra.sh" env)"
export MONGO_URL NATS_URL REDIS_URL
# Named for the tests alone: STRIPE_API_BASE would follow into the scripts started below.
export STRIPE_MOCK_URL="http://$INFRA_HOST:$STRIPE_MOCK_PORT"
unset STRIPE_API_BASE

unset RUST_LOG
export RUST_BACKTRACE=1

# timed LABEL CMD...: runs CMD; sets run_rc to its exit status and run_summary to
# "LABEL: PASS (<seconds>s)" or "LABEL: FAIL exit <status> (<seconds>s)".
# Its output is also kept in .data/logs/test/LABEL.log: a failed step's last lines are shown
# again just before the summary, because a CI log cut to its tail would otherwise end with the
# steps after it and not say why it failed.
TEST_LOGS="$ROOT/.data/logs/test"
mkdir -p "$TEST_LOGS"
rm -f "$TEST_LOGS"/*.log
failed_steps=()
timed() {
  local label="$1"
  shift
  local start=$SECONDS out="$TEST_LOGS/${label// /-}.log"
  run_rc=0
  "$@" 2>&1 | tee "$out" || run_rc=${PIPESTATUS[0]}
  local took=$((SECONDS - start))
  if ((run_rc == 0)); then
    run_summary="$label: PASS (${took}s)"
  else
    run_summary="$label: FAIL exit $run_rc (${took}s)"
    failed_steps+=("$label")
  fi
}

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
has_e2e=no
[[ -f e2e/Cargo.toml ]] && has_e2e=yes
if [[ "$select_packages" == no ]]; then
  # e2e's browser test drives the running app: `test = false` keeps it for step 4 (scripts/e2e.sh),
  # and selecting the whole workspace here lets step 4 reuse this build (same features).
  cargo_args+=(--workspace)
fi
[[ -f Cargo.lock ]] && cargo_args+=(--locked)
cargo_args+=("$@")

log "running: cargo ${cargo_args[*]} (MONGO_URL=$MONGO_URL NATS_URL=$NATS_URL REDIS_URL=$REDIS_URL)"
timed "cargo test" cargo "${cargo_args[@]}"
cargo_rc=$run_rc cargo_summary=$run_summary

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

# ------------------------------------------------------------------ steps on the whole stack
# skip_reason VAR: why a step on the whole stack does not run (nothing: it runs). VAR=0: never;
# VAR=1: also with selected packages or after a failed step 2.
skip_reason() {
  local var="$1" value="${!1:-}"
  if [[ "$value" == 0 ]]; then
    echo "skipped ($var=0)"
  elif [[ "$select_packages" == yes && "$value" != 1 ]]; then
    echo "skipped (packages selected; $var=1 runs it)"
  elif ((cargo_rc != 0)) && [[ "$value" != 1 ]]; then
    echo "skipped (cargo test failed; $var=1 runs it)"
  fi
}

# stack_step LABEL VAR WHAT CMD...: runs CMD unless skip_reason VAR; sets step_rc and
# step_summary ("LABEL: PASS (12s)").
stack_step() {
  local label="$1" var="$2" what="$3" reason
  shift 3
  step_rc=0
  reason="$(skip_reason "$var")"
  if [[ -n "$reason" ]]; then
    step_summary="$label: $reason"
    return 0
  fi
  log "running: $what"
  timed "$label" "$@"
  step_rc=$run_rc step_summary=$run_summary
}

# 4. the browser tests: cargo test built every service's debug binary (they have integration
# tests); e2e.sh builds any that is missing, starts the app on them, runs cargo test --workspace
# --test browser, stops the app.
e2e_rc=0
e2e_summary="e2e: none"
if [[ "$has_e2e" == yes ]]; then
  stack_step e2e E2E "APP_SKIP_BUILD=1 APP_PROFILE=debug scripts/e2e.sh (the app in a browser)" \
    env APP_SKIP_BUILD=1 APP_PROFILE=debug bash "$ROOT/scripts/e2e.sh"
  e2e_rc=$step_rc
  e2e_summary=$step_summary
fi

# 5. the fault suite: its own FerretDB/NATS/Redis (INFRA_INSTANCE=faults), restarted under the
# services.
faults_rc=0
faults_summary="faults: none"
if [[ -f "$ROOT/fault-suite/Cargo.toml" ]]; then
  stack_step faults FAULTS "FAULTS_SKIP_BUILD=1 scripts/faults.sh (faults injected into the real stack)" \
    env FAULTS_SKIP_BUILD=1 bash "$ROOT/scripts/faults.sh"
  faults_rc=$step_rc
  faults_summary=$step_summary
fi

# 6. two replicas of every service: the fault suite's baseline, a SIGKILL and the rolling restart,
# then a short benchmark through nginx (debug builds, small numbers: it proves the replicas work
# together, its figures say nothing about speed).
replicas_check() {
  FAULTS_REPLICAS=2 FAULTS_ONLY=baseline,orders,rolling-restart FAULTS_CHAOS=0 FAULTS_SKIP_BUILD=1 \
    bash "$ROOT/scripts/faults.sh" || return
  BENCH_REPLICAS=2 BENCH_APP_PROFILE=debug APP_SKIP_BUILD=1 BENCH_USERS=60 BENCH_TICKETS=20 \
    BENCH_SIGNIN_USERS=20 BENCH_BROWSE_LEVELS=1,16 BENCH_BROWSE_SECONDS=1 BENCH_STARTUP_RUNS=1 BENCH_HISTORY=0,200 BENCH_HISTORY_SECONDS=1 \
    bash "$ROOT/scripts/bench.sh"
}
replicas_rc=0
replicas_summary="replicas: none"
if [[ -f "$ROOT/fault-suite/Cargo.toml" && -f "$ROOT/bench/Cargo.toml" ]]; then
  stack_step replicas REPLICAS "2 replicas of each service: scripts/faults.sh (rolling restart) and a short scripts/bench.sh" \
    replicas_check
  replicas_rc=$step_rc
  replicas_summary=$step_summary
fi

# ------------------------------------------------------------------ summary
for label in "${failed_steps[@]}"; do
  out="$TEST_LOGS/${label// /-}.log"
  log "why '$label' failed: the last 40 lines of its output (all of it in ${out#"$ROOT"/}):"
  tail -n 40 "$out"
done
overall=PASS
((cargo_rc == 0 && py_rc == 0 && e2e_rc == 0 && faults_rc == 0 && replicas_rc == 0)) || overall=FAIL
if [[ -n "${CI:-}" ]]; then infra_note="infra stopped (CI)"; else infra_note="infra left running (scripts/infra.sh down)"; fi
echo "SUMMARY: $overall | $infra_summary | $cargo_summary | $py_summary | $e2e_summary | $faults_summary | $replicas_summary | total $((SECONDS - started))s | $infra_note"
[[ "$overall" == PASS ]]
