#!/usr/bin/env bash
# Benchmark of the real local stack under a flash sale (README, "Performance").
#
#   scripts/bench.sh    build the benchmark (cargo build --release -p bench), stop the app and
#                       start it fresh (scripts/app.sh: release builds, stripe-mock, the auth rate
#                       limit off with AUTH_RATE_LIMIT_PER_MINUTE=0, a 900 s reservation window
#                       with EXPIRATION_WINDOW_SECONDS=900 so that no order of the flash sale can
#                       expire and be sold again during the run), run `cargo run --release -p
#                       bench` against http://127.0.0.1:8080 (loopback only), then stop the app
#                       again, also on failure or timeout. The benchmark adds a seller, 100 sold
#                       tickets and their orders and payments to the app's data, and removes the
#                       1,000 users it signs up (…@bench.test) when it ends.
#                       First the history dimension (issue 13): the app's databases are
#                       EMPTIED (documents only), and so is the expiration service's Redis (the
#                       jobs of the deleted orders), then the read workloads run with 0, 1,000 and
#                       10,000 sold tickets seeded in bulk (copies of one real purchase) and a
#                       DB-free ceiling, and the databases are emptied again, so that the
#                       phases after it start from empty databases.
#                       A run takes about 5 minutes (plus builds). Results, in the ignored
#                       bench-results/<run>/: results.json, report.md with SVG charts, summary.md
#                       (the README's table); bench-results/latest points at the newest run.
#                       Every phase also reports the commands FerretDB served meanwhile, read
#                       from its metrics (FERRETDB_METRICS_URL, from scripts/infra.sh env).
#                       Exits non-zero when the flash sale did not sell every ticket exactly once.
# Environment (optional; defaults in bench/src/run.rs):
#   BENCH_USERS (1000)  BENCH_TICKETS (100)  BENCH_SIGNIN_USERS (200)  BENCH_AUTH_CONCURRENCY (16)
#   BENCH_SALE_IN_FLIGHT (256)  BENCH_BROWSE_LEVELS (1,4,16,64,256)  BENCH_BROWSE_SECONDS (4)
#   BENCH_STARTUP_RUNS (3)
#   BENCH_HISTORY (0,1000,10000)  sold tickets seeded before each step of the history dimension;
#                       `none`: no history dimension (and the app's data is left alone)
#   BENCH_HISTORY_LEVELS (64)  concurrent clients of its workloads   BENCH_HISTORY_SECONDS (4)
#   INFRA_INSTANCE, INFRA_PORT_OFFSET  run the app on another instance (scripts/lib.sh)
#   INFRA_DB_BACKEND    sqlite or postgresql: FerretDB's backend (scripts/infra.sh)
#   BENCH_PROFILE=1     also record `perf record -g` of every process during the top browse levels
#                       and the flash sale (perf summaries in the report, data in profile/)
#   BENCH_TIMEOUT       seconds the benchmark itself may take (default 1200)
#   BENCH_REPLICAS      replicas of the services (scripts/app.sh --replicas SPEC; default 1),
#                       e.g. 2: two of each behind nginx
#   BENCH_APP_PROFILE   release (default) or debug: the services and the benchmark as debug builds
#                       (the test command's short smoke run on the binaries cargo test built;
#                       its figures say nothing about speed)
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"

APP=(bash "$ROOT/scripts/app.sh")
INFRA=(bash "$ROOT/scripts/infra.sh")
TIMEOUT="${BENCH_TIMEOUT:-1200}"
BENCH_LOG="$LOG_DIR/bench.log"
BUILD_LOG="$LOG_DIR/bench-build.log"

app_started=0

stop_app() {
  if ((app_started)); then
    log "stopping the app (scripts/app.sh down)"
    "${APP[@]}" down || warn "scripts/app.sh down failed"
  fi
}

# Every service's log tail, nginx's and the benchmark's, after a failure.
show_tails() {
  local name
  for name in auth tickets orders payments expiration client nginx; do
    show_log_tail "$LOG_DIR/$name.log" 15
  done
  show_log_tail "$BENCH_LOG" 40
}

main() {
  case "${1:-}" in
    "") ;;
    -h | --help | help) usage ;;
    *)
      echo "unknown argument '$1'" >&2
      usage
      ;;
  esac
  [[ "$TIMEOUT" =~ ^[0-9]+$ ]] || die "BENCH_TIMEOUT must be a number of seconds (got '$TIMEOUT')"
  with_lock bench
  local start=$SECONDS

  local profile="${BENCH_APP_PROFILE:-release}" replicas="${BENCH_REPLICAS:-1}"
  local -a cargo_profile=(--release)
  case "$profile" in
    release) ;;
    debug) cargo_profile=() ;;
    *) die "BENCH_APP_PROFILE must be release or debug (got '$profile')" ;;
  esac

  # 1. The benchmark's own build first, so that compiling never overlaps a measurement.
  log "building: cargo build ${cargo_profile[*]} -p bench (log ${BUILD_LOG#"$ROOT"/})"
  cargo build "${cargo_profile[@]}" -p bench >"$BUILD_LOG" 2>&1 ||
    fail_with_log "$BUILD_LOG" "cargo build ${cargo_profile[*]} -p bench failed"

  # 2. A fresh app: idle and peak memory are per process lifetime, and no state from earlier use.
  trap stop_app EXIT
  trap 'exit 130' INT TERM
  log "stopping the app so that every service starts fresh"
  "${APP[@]}" down
  app_started=1
  log "starting the app: $profile builds, $replicas replica(s), stripe-mock, auth rate limit off, 900 s reservations"
  # (app.sh shows the failing log itself)
  env -u STRIPE_KEY -u STRIPE_API_BASE EXPIRATION_WINDOW_SECONDS=900 \
    AUTH_RATE_LIMIT_PER_MINUTE=0 APP_PROFILE="$profile" "${APP[@]}" up --replicas "$replicas" ||
    die "scripts/app.sh up failed"
  eval "$("${INFRA[@]}" env)"

  # 3. The benchmark, bounded in time (timeout signals its whole process group).
  log "running the benchmark through http://127.0.0.1:$NGINX_PORT (up to ${TIMEOUT}s; log ${BENCH_LOG#"$ROOT"/})"
  local rc=0
  : >"$BENCH_LOG"
  BENCH_REPO="$ROOT" BENCH_RUN_DIR="$RUN_DIR" BENCH_OUT_DIR="$ROOT/bench-results" \
    BENCH_BASE_URL="http://127.0.0.1:$NGINX_PORT" MONGO_URL="$MONGO_URL" NATS_URL="$NATS_URL" \
    BENCH_REPLICAS="$replicas" BENCH_DB_BACKEND="$(cat "$DATA_DIR/ferretdb.backend" 2>/dev/null || echo sqlite)" \
    timeout --signal=INT --kill-after=30 "$TIMEOUT" cargo run "${cargo_profile[@]}" -q -p bench 2>&1 |
    tee "$BENCH_LOG" || rc=$?
  if ((rc == 124)); then
    show_tails
    die "the benchmark did not finish within ${TIMEOUT}s"
  elif ((rc != 0)); then
    show_tails
    die "the benchmark failed (exit $rc)"
  fi
  log "benchmark done in $((SECONDS - start))s: bench-results/latest/report.md"
}

main "$@"
