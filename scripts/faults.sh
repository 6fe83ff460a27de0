#!/usr/bin/env bash
# The fault suite: the five backend services as real processes on a private set of FerretDB, NATS
# and Redis (INFRA_INSTANCE=faults: own data and ports, so restarting them disturbs nothing else),
# a scripted purchase flow per fault (none, NATS restart, orders SIGKILL, payments SIGKILL,
# FerretDB down for 3 s), and a table of operations attempted/acknowledged, inconsistencies (must
# be 0) and time to converge.
#
#   scripts/faults.sh            build the debug binaries if needed, run, print the table
#   FAULTS_SKIP_BUILD=1 ...      use target/debug as it is (the test command already built it)
# The table is also written to bench-results/faults.md.
set -euo pipefail
export INFRA_INSTANCE=faults

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"

trap 'log "stopping the fault-suite infrastructure"; bash "$ROOT/scripts/infra.sh" down >/dev/null 2>&1 || true' EXIT

log "starting a private FerretDB, NATS and Redis for the fault suite (ports +$PORT_OFFSET)"
bash "$ROOT/scripts/infra.sh" up ferretdb nats redis
eval "$(bash "$ROOT/scripts/infra.sh" env)"
export MONGO_URL NATS_URL REDIS_URL

services=(auth tickets orders payments expiration)
need_build=0
[[ "${FAULTS_SKIP_BUILD:-0}" == 1 ]] || need_build=1
for s in "${services[@]}"; do [[ -x "target/debug/$s" ]] || need_build=1; done
if ((need_build)); then
  build_args=()
  for s in "${services[@]}"; do build_args+=(-p "$s"); done
  log "building the service binaries (debug): cargo build --bins ${build_args[*]}"
  cargo build --bins "${build_args[@]}"
fi

mkdir -p bench-results
log "running the fault suite (about 2 minutes; service logs in .data/logs/fault-suite/)"
rc=0
cargo run --quiet -p fault-suite | tee bench-results/faults.md || rc=$?
if ((rc != 0)); then
  log "the fault suite failed; last lines of each service log:"
  for f in "$ROOT"/.data/logs/fault-suite/*.log; do
    [[ -f "$f" ]] || continue
    echo "---- ${f#"$ROOT"/}"
    tail -n 15 "$f"
  done
fi
exit "$rc"
