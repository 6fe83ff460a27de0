#!/usr/bin/env bash
# The fault suite: the five backend services as real processes on a private set of FerretDB, NATS
# and Redis (INFRA_INSTANCE=faults: own data and ports, so restarting them disturbs nothing else).
# First a scripted purchase flow per fault (none; NATS restarted, down 3 s, down 120 s; FerretDB
# down 3 s, frozen 8 s, down 120 s; each service SIGKILLed; Redis restarted or emptied; poison on
# the bus; Stripe slow, down or failing; a payment racing its order's expiry), and a table of
# operations attempted/acknowledged, problems (must be 0) and time to converge. Then a short seeded
# chaos run: buyers and sellers in a loop while random faults hit random components, and every
# invariant checked after convergence.
#
#   scripts/faults.sh                       build the debug binaries if needed, run the table, then
#                                           the chaos run (seed FAULTS_CHAOS_SEED, default 1, for
#                                           FAULTS_CHAOS_MINUTES, default 2; FAULTS_CHAOS=0 skips it)
#   scripts/faults.sh --chaos SEED --minutes N
#                                           only a chaos run (its schedule derives from SEED alone)
#   FAULTS_SKIP_BUILD=1 ...                 use the debug binaries as they are (the test command
#                                           built them)
#   FAULTS_BIN_DIR=DIR ...                  where the service binaries are (default
#                                           $CARGO_TARGET_DIR/debug, else target/debug); implies
#                                           FAULTS_SKIP_BUILD=1
#   FAULTS_ONLY=name,name ...               only these scenarios of the table (run names in
#                                           fault-suite/src/main.rs)
#   FAULTS_REPLICAS=N ...                   N replicas of every service (1-9, default 1), behind
#                                           the suite's round-robin balancer (fault-suite/src/stack.rs);
#                                           the rolling restart must then fail no request
# The table is written to bench-results/faults.md (faults-N-replicas.md with FAULTS_REPLICAS=N > 1),
# the chaos report to bench-results/chaos.md.
# The table takes about 9 minutes (two outages of 120 s among them), the default chaos run 3.
set -euo pipefail
export INFRA_INSTANCE=faults

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"

chaos_seed=""
chaos_minutes=""
while (($# > 0)); do
  case "$1" in
    --chaos)
      [[ $# -ge 2 && "$2" =~ ^[0-9]+$ ]] || die "--chaos needs a seed (a number)"
      chaos_seed="$2"
      shift 2
      ;;
    --minutes)
      [[ $# -ge 2 && "$2" =~ ^[0-9]+(\.[0-9]+)?$ ]] || die "--minutes needs a number"
      chaos_minutes="$2"
      shift 2
      ;;
    -h | --help)
      sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//' >&2
      exit 2
      ;;
    *) die "unknown argument '$1' (see scripts/faults.sh --help)" ;;
  esac
done
[[ -z "$chaos_minutes" || -n "$chaos_seed" ]] || die "--minutes goes with --chaos SEED"

# shellcheck disable=SC2329 # invoked by the EXIT trap
cleanup() {
  # A run stopped while FerretDB was frozen (SIGSTOP) must not leave it frozen.
  local pid
  if pid="$(bash "$ROOT/scripts/infra.sh" pid ferretdb 2>/dev/null)"; then
    kill -CONT "$pid" 2>/dev/null || true
  fi
  log "stopping the fault-suite infrastructure"
  bash "$ROOT/scripts/infra.sh" down >/dev/null 2>&1 || true
}
trap cleanup EXIT

log "starting a private FerretDB, NATS and Redis for the fault suite (ports +$PORT_OFFSET)"
bash "$ROOT/scripts/infra.sh" up ferretdb nats redis
eval "$(bash "$ROOT/scripts/infra.sh" env)"
export MONGO_URL NATS_URL REDIS_URL

services=(auth tickets orders payments expiration)
target_dir="${CARGO_TARGET_DIR:-$ROOT/target}"
case "$target_dir" in /*) ;; *) target_dir="$ROOT/$target_dir" ;; esac
need_build=0
if [[ -n "${FAULTS_BIN_DIR:-}" ]]; then
  case "$FAULTS_BIN_DIR" in /*) ;; *) FAULTS_BIN_DIR="$ROOT/$FAULTS_BIN_DIR" ;; esac
  for s in "${services[@]}"; do [[ -x "$FAULTS_BIN_DIR/$s" ]] || die "FAULTS_BIN_DIR=$FAULTS_BIN_DIR has no binary $s"; done
else
  FAULTS_BIN_DIR="$target_dir/debug"
  [[ "${FAULTS_SKIP_BUILD:-0}" == 1 ]] || need_build=1
  for s in "${services[@]}"; do [[ -x "$FAULTS_BIN_DIR/$s" ]] || need_build=1; done
fi
export FAULTS_BIN_DIR
if ((need_build)); then
  build_args=()
  for s in "${services[@]}"; do build_args+=(-p "$s"); done
  log "building the service binaries (debug): cargo build --bins ${build_args[*]}"
  cargo build --bins "${build_args[@]}"
fi

mkdir -p "$ROOT/.data/logs/fault-suite"
stamp="$ROOT/.data/logs/fault-suite/.started"
touch "$stamp"
# The last lines of the service logs of the runs named (all of this invocation's runs if none).
show_logs() {
  local what="$1" f run
  shift
  log "$what; last lines of the service logs of ${*:-every run}:"
  for f in "$ROOT"/.data/logs/fault-suite/*.log; do
    [[ -f "$f" && "$f" -nt "$stamp" ]] || continue
    if (($# > 0)); then
      # <run>-<service>[-<replica>].log
      run="$(basename "$f" .log)"
      run="${run%-[0-9]}"
      run="${run%-*}"
      [[ " $* " == *" $run "* ]] || continue
    fi
    echo "---- ${f#"$ROOT"/}"
    tail -n 15 "$f"
  done
}

mkdir -p bench-results
started=$SECONDS
rc=0
if [[ -z "$chaos_seed" ]]; then
  log "running the fault suite's table (about 9 minutes; ${FAULTS_REPLICAS:-1} replica(s) of each service; service logs in .data/logs/fault-suite/)"
  problems="$ROOT/.data/logs/fault-suite/problems.txt"
  rm -f "$problems" "$ROOT/.data/logs/fault-suite/failed-runs.txt"
  table=bench-results/faults.md
  if [[ "${FAULTS_REPLICAS:-1}" != 1 ]]; then table="bench-results/faults-${FAULTS_REPLICAS}-replicas.md"; fi
  cargo run --quiet -p fault-suite | tee "$table" || rc=$?
  if ((rc != 0)); then
    failed_runs=()
    if [[ -s "$ROOT/.data/logs/fault-suite/failed-runs.txt" ]]; then
      mapfile -t failed_runs <"$ROOT/.data/logs/fault-suite/failed-runs.txt"
    fi
    show_logs "the fault suite's table failed" "${failed_runs[@]}"
    # Last, so that a log cut short still ends with the reason.
    if [[ -s "$problems" ]]; then
      log "the fault suite's table failed with these problems:"
      cat "$problems"
    fi
  fi
  if [[ "${FAULTS_CHAOS:-1}" != 0 && -z "${FAULTS_ONLY:-}" ]]; then
    chaos_seed="${FAULTS_CHAOS_SEED:-1}"
    chaos_minutes="${FAULTS_CHAOS_MINUTES:-2}"
  fi
fi
if [[ -n "$chaos_seed" ]]; then
  chaos_minutes="${chaos_minutes:-2}"
  log "chaos run: seed $chaos_seed for $chaos_minutes min (report in bench-results/chaos.md)"
  chaos_rc=0
  cargo run --quiet -p fault-suite -- --chaos "$chaos_seed" --minutes "$chaos_minutes" || chaos_rc=$?
  if ((chaos_rc != 0)); then
    show_logs "the chaos run (seed $chaos_seed) failed" "chaos-$chaos_seed"
    if [[ -s bench-results/chaos.md ]]; then
      log "the chaos run's invariants (report in bench-results/chaos.md):"
      sed -n '/^## Invariants/,$p' bench-results/chaos.md
    fi
    rc=$chaos_rc
  fi
fi
log "fault suite done in $((SECONDS - started))s"
exit "$rc"
