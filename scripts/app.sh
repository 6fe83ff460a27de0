#!/usr/bin/env bash
# The whole app locally, behind nginx on http://localhost:8080.
#
#   scripts/app.sh up [--replicas SPEC]
#                                   infra (+ stripe-mock unless STRIPE_KEY is set), cargo build
#                                   of the services that exist (APP_PROFILE), start them (a running
#                                   one is restarted when its binary or settings changed), start
#                                   nginx, wait for every GET /readyz = 200
#   scripts/app.sh restart [SERVICE...]
#                                   rolling restart of the running app (all services, or these), as
#                                   a Kubernetes rollout does it: one replica at a time is taken out
#                                   of nginx's upstream (reload), stopped with SIGTERM, started, and
#                                   put back once its /readyz is 200. A service with one replica is
#                                   simply restarted (nginx answers 502 for it meanwhile)
#   scripts/app.sh down             stop the services and nginx (infra: scripts/infra.sh down)
#   scripts/app.sh status           services (each replica), nginx and infra, up/down
#   scripts/app.sh logs NAME [-f]   last 200 lines of .data/logs/NAME.log (-f: follow)
#
# Replicas (--replicas SPEC, or APP_REPLICAS=SPEC; default 1 of each): SPEC is a count for every
# service and/or SERVICE=COUNT pairs, comma-separated, e.g. `2`, `orders=3`, `2,client=1`
# (1 to 9 each). Replica 1 of a service is named after it (log .data/logs/orders.log), replica K
# is NAME-K (orders-2, .data/logs/orders-2.log) and listens 10*(K-1) ports above the first
# (orders-2: 3013, metrics 9473). nginx balances each route across the service's replicas
# round-robin and retries a request on the next replica when connecting fails, as ingress-nginx
# does (proxy_next_upstream error timeout, 3 tries); .data/run/app.upstreams says which replicas
# are in rotation (scripts/infra.sh renders nginx.conf from it).
#
# Services (a service exists when <name>/Cargo.toml exists) and their local ports:
#   client 3000, auth 3001, tickets 3002, orders 3003, payments 3004, expiration 3005
# and metrics ports (GET /metrics, Prometheus text; `status` lists them):
#   client 9460, auth 9461, tickets 9462, orders 9463, payments 9464, expiration 9465
# Each is started from target/<profile>/<name> with a clean environment:
#   all          PORT, METRICS_PORT, HOST=127.0.0.1, RUST_LOG (default info),
#                + OTEL_EXPORTER_OTLP_ENDPOINT (only when set in the caller's environment)
#   auth         JWT_KEY, MONGO_URL, MONGO_DB=auth, CLIENT_ADDRESS_KEY,
#                + AUTH_RATE_LIMIT_PER_MINUTE (only when set in the caller's environment)
#   tickets, orders, payments
#                JWT_KEY, MONGO_URL, MONGO_DB=<name>, NATS_URL
#   orders       + EXPIRATION_WINDOW_SECONDS (only when set in the caller's environment)
#   payments     + STRIPE_KEY, STRIPE_API_BASE (stripe-mock: sk_test_123, http://127.0.0.1:12111)
#   expiration   NATS_URL, REDIS_URL
#   tickets, orders, payments, expiration
#                + EVENT_HANDLERS_PER_SUBJECT (only when set in the caller's environment)
#   auth, tickets, orders, payments
#                + MONGO_REQUEST_CONCURRENCY (only when set in the caller's environment)
#   client       API_BASE_URL=http://127.0.0.1:8080, CLIENT_ADDRESS_KEY, CSRF_KEY,
#                STRIPE_PUBLISHABLE_KEY, STRIPE_JS_URL (when set)
# JWT_KEY, CLIENT_ADDRESS_KEY (auth and client), CSRF_KEY (client): taken from the environment,
# else generated once into .data/jwt_key, .data/client_address_key, .data/csrf_key (mode 0600).
# Environment:
#   APP_PROFILE        release (default: cargo build --release -p <each service>, target/release/)
#                      or debug (cargo build --bins -p <each service>, target/debug/)
#   APP_SKIP_BUILD=1   no cargo build when every service's binary exists in target/<profile>/
#                      (scripts/test.sh: cargo test already built them); only missing ones are built
#   APP_READY_TIMEOUT  seconds to wait for each service's /readyz (default 60)
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"

SERVICES=(client auth tickets orders payments expiration)
READY_TIMEOUT="${APP_READY_TIMEOUT:-60}"
PROFILE="${APP_PROFILE:-release}"
INFRA=(bash "$ROOT/scripts/infra.sh")
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
case "$TARGET_DIR" in /*) ;; *) TARGET_DIR="$ROOT/$TARGET_DIR" ;; esac

usage() {
  sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//' >&2
  exit 2
}

# A replica's service: orders-2 -> orders.
service_of() { printf '%s\n' "${1%-[0-9]}"; }

# A replica's number: orders -> 1, orders-2 -> 2.
replica_of() {
  case "$1" in
    *-[0-9]) printf '%s\n' "${1##*-}" ;;
    *) echo 1 ;;
  esac
}

# Shifted by PORT_OFFSET for another INFRA_INSTANCE (see lib.sh), and by 10 per replica after
# the first.
service_port() {
  local base
  case "$(service_of "$1")" in
    client) base=3000 ;;
    auth) base=3001 ;;
    tickets) base=3002 ;;
    orders) base=3003 ;;
    payments) base=3004 ;;
    expiration) base=3005 ;;
    *) die "unknown service $1" ;;
  esac
  echo $((base + 10 * ($(replica_of "$1") - 1) + PORT_OFFSET))
}

# Where a service serves GET /metrics: its own port beside its HTTP port (all run on one
# machine, so the usual 9464 cannot be everyone's); shifted by PORT_OFFSET too.
service_metrics_port() {
  echo $(($(service_port "$1") + 6460))
}

# Services whose crate exists.
existing_services() {
  local s
  for s in "${SERVICES[@]}"; do
    [[ -f "$ROOT/$s/Cargo.toml" ]] && echo "$s"
  done
  return 0
}

# How many replicas each service runs: REPLICAS[service], from SPEC (see the header).
declare -A REPLICAS=()
parse_replicas() {
  local spec="$1" item name count s
  for s in "${SERVICES[@]}"; do REPLICAS[$s]=1; done
  [[ -n "$spec" ]] || return 0
  IFS=',' read -r -a items <<<"$spec"
  for item in "${items[@]}"; do
    item="${item// /}"
    if [[ "$item" =~ ^[1-9]$ ]]; then
      for s in "${SERVICES[@]}"; do REPLICAS[$s]=$item; done
    elif [[ "$item" =~ ^([a-z]+)=([1-9])$ ]]; then
      name="${BASH_REMATCH[1]}"
      count="${BASH_REMATCH[2]}"
      [[ " ${SERVICES[*]} " == *" $name "* ]] || die "--replicas: unknown service '$name' (services: ${SERVICES[*]})"
      REPLICAS[$name]=$count
    else
      die "--replicas: '$item' is neither a count (1-9) nor SERVICE=COUNT (e.g. 2,orders=3)"
    fi
  done
}

# replicas_of SERVICE: the names of its replicas (orders orders-2 ...).
replicas_of() {
  local s="$1" k
  echo "$s"
  for ((k = 2; k <= ${REPLICAS[$s]:-1}; k++)); do echo "$s-$k"; done
}

# running_replicas SERVICE: the names of its replicas that have a pid file (running or stale).
running_replicas() {
  local s="$1" f
  [[ -f "$RUN_DIR/$s.pid" ]] && echo "$s"
  for f in "$RUN_DIR/$s"-[0-9].pid; do
    [[ -f "$f" ]] && basename "$f" .pid
  done
  return 0
}

# write_upstreams [OUT...]: .data/run/app.upstreams, one line per service that nginx routes to:
# its first replica's port, then the ports of its replicas in rotation (all but OUT; never none).
write_upstreams() {
  local s r port line out
  local -a ports
  {
    for s in client auth tickets orders payments; do
      ports=()
      while IFS= read -r r; do
        out=0
        for o in "$@"; do [[ "$o" == "$r" ]] && out=1; done
        ((out)) || ports+=("$(service_port "$r")")
      done < <(replicas_of "$s")
      ((${#ports[@]} > 0)) || ports=("$(service_port "$s")")
      line="$(service_port "$s") ${ports[*]}"
      echo "$line"
    done
  } >"$RUN_DIR/app.upstreams.tmp"
  mv -f "$RUN_DIR/app.upstreams.tmp" "$RUN_DIR/app.upstreams"
}

# The replica counts of the running app, from its pid files (for `restart`).
replicas_from_pidfiles() {
  local s n
  for s in "${SERVICES[@]}"; do
    n="$(running_replicas "$s" | wc -l)"
    ((n > 0)) || n=1
    REPLICAS[$s]=$n
  done
}

# Package name from <dir>/Cargo.toml (falls back to the directory name).
package_name() {
  local name
  name="$(awk '/^\[package\]/ { p = 1; next } /^\[/ { p = 0 }
    p && /^name[[:space:]]*=/ { sub(/^name[[:space:]]*=[[:space:]]*"/, ""); sub(/".*/, ""); print; exit }' "$ROOT/$1/Cargo.toml")"
  echo "${name:-$1}"
}

# kept_key VAR FILE WHAT: the value of $VAR when set, else a random key generated once into
# .data/FILE (mode 0600) and kept, so that sessions survive restarts.
kept_key() {
  local var="$1" file="$2" what="$3"
  if [[ -n "${!var:-}" ]]; then
    printf '%s' "${!var}"
    return
  fi
  local keyfile="$DATA_DIR/$file"
  if [[ ! -s "$keyfile" ]]; then
    log "generating $what into ${keyfile#"$ROOT"/}"
    (
      umask 077
      head -c 48 /dev/urandom | base64 | tr -d '\n=+/' >"$keyfile.tmp"
      mv -f "$keyfile.tmp" "$keyfile"
    )
  fi
  chmod 600 "$keyfile"
  cat "$keyfile"
}

# service_settings NAME: the settings of a service, one VAR=value per line.
service_settings() {
  local s="$1"
  echo "PORT=$(service_port "$s")"
  echo "METRICS_PORT=$(service_metrics_port "$s")"
  echo "HOST=127.0.0.1"
  echo "RUST_LOG=${RUST_LOG:-info}"
  if [[ -n "${OTEL_EXPORTER_OTLP_ENDPOINT:-}" ]]; then echo "OTEL_EXPORTER_OTLP_ENDPOINT=$OTEL_EXPORTER_OTLP_ENDPOINT"; fi
  case "$(service_of "$s")" in
    auth)
      echo "JWT_KEY=$APP_JWT_KEY"
      echo "MONGO_URL=$MONGO_URL"
      echo "MONGO_DB=auth"
      echo "CLIENT_ADDRESS_KEY=$APP_CLIENT_ADDRESS_KEY"
      if [[ -n "${AUTH_RATE_LIMIT_PER_MINUTE:-}" ]]; then echo "AUTH_RATE_LIMIT_PER_MINUTE=$AUTH_RATE_LIMIT_PER_MINUTE"; fi
      ;;&
    tickets | orders | payments)
      echo "JWT_KEY=$APP_JWT_KEY"
      echo "MONGO_URL=$MONGO_URL"
      echo "MONGO_DB=$(service_of "$s")"
      echo "NATS_URL=$NATS_URL"
      if [[ -n "${EVENT_HANDLERS_PER_SUBJECT:-}" ]]; then echo "EVENT_HANDLERS_PER_SUBJECT=$EVENT_HANDLERS_PER_SUBJECT"; fi
      ;;&
    auth | tickets | orders | payments)
      if [[ -n "${MONGO_REQUEST_CONCURRENCY:-}" ]]; then echo "MONGO_REQUEST_CONCURRENCY=$MONGO_REQUEST_CONCURRENCY"; fi
      ;;&
    orders)
      if [[ -n "${EXPIRATION_WINDOW_SECONDS:-}" ]]; then echo "EXPIRATION_WINDOW_SECONDS=$EXPIRATION_WINDOW_SECONDS"; fi
      ;;
    payments)
      echo "STRIPE_KEY=$STRIPE_KEY"
      if [[ -n "${STRIPE_API_BASE:-}" ]]; then echo "STRIPE_API_BASE=$STRIPE_API_BASE"; fi
      ;;
    expiration)
      echo "NATS_URL=$NATS_URL"
      echo "REDIS_URL=$REDIS_URL"
      if [[ -n "${EVENT_HANDLERS_PER_SUBJECT:-}" ]]; then echo "EVENT_HANDLERS_PER_SUBJECT=$EVENT_HANDLERS_PER_SUBJECT"; fi
      ;;
    client)
      echo "API_BASE_URL=http://127.0.0.1:$NGINX_PORT"
      echo "CLIENT_ADDRESS_KEY=$APP_CLIENT_ADDRESS_KEY"
      echo "CSRF_KEY=$APP_CSRF_KEY"
      if [[ -n "${STRIPE_PUBLISHABLE_KEY:-}" ]]; then echo "STRIPE_PUBLISHABLE_KEY=$STRIPE_PUBLISHABLE_KEY"; fi
      if [[ -n "${STRIPE_JS_URL:-}" ]]; then echo "STRIPE_JS_URL=$STRIPE_JS_URL"; fi
      ;;
  esac
}

# service_env NAME: the whole environment of a service: its settings, then useful
# process-level variables passed through when present.
service_env() {
  service_settings "$1"
  local v
  for v in HOME LANG LC_ALL TZ SSL_CERT_FILE SSL_CERT_DIR; do
    if [[ -n "${!v:-}" ]]; then echo "$v=${!v}"; fi
  done
  echo "PATH=$PATH"
  echo "RUST_BACKTRACE=${RUST_BACKTRACE:-1}"
}

service_bin() { printf '%s/%s/%s\n' "$TARGET_DIR" "$PROFILE" "$(package_name "$(service_of "$1")")"; }

# Identity of a built binary, to restart a running service after a rebuild.
binary_id() { stat -c '%Y %s' "$1" 2>/dev/null || true; }

# launch_id NAME BIN: what a service is started with: the binary (path and identity) and a hash of
# its settings.  Kept in .data/run/NAME.launch; `up` restarts a running service when it changes
# (rebuilt, other APP_PROFILE, or e.g. EXPIRATION_WINDOW_SECONDS set or unset).
launch_id() {
  printf 'binary %s %s\n' "$2" "$(binary_id "$2")"
  printf 'settings %s\n' "$(service_settings "$1" | sha256sum | cut -d' ' -f1)"
}

start_service() {
  local s="$1" bin pid idfile want have
  bin="$(service_bin "$s")"
  idfile="$RUN_DIR/$s.launch"
  [[ -x "$bin" ]] || die "service $s: binary $bin not found after cargo build (is the [[bin]] named after the package?)"
  want="$(launch_id "$s" "$bin")"
  if pid="$(daemon_pid "$s")"; then
    have="$(cat "$idfile" 2>/dev/null || true)"
    if [[ "$have" == "$want" ]]; then
      log "$s already running (pid $pid)"
      return 0
    fi
    if [[ "${have%%$'\n'*}" != "${want%%$'\n'*}" ]]; then
      log "$s: binary changed (rebuilt, or another APP_PROFILE), restarting"
    else
      log "$s: settings changed, restarting"
    fi
    stop_daemon "$s"
  fi
  local port
  port="$(service_port "$s")"
  if port_open 127.0.0.1 "$port"; then
    local owner
    owner="$(port_owner "$port")"
    die "cannot start $s: 127.0.0.1:$port is already in use by a process this script did not start${owner:+:
$owner}"
  fi
  # The environment goes through a 0600 file, so that secrets appear neither in the log's
  # start line nor in any process's argv.
  local envfile="$RUN_DIR/$s.env" line name value
  (
    umask 077
    while IFS= read -r line; do
      name="${line%%=*}"
      value="${line#*=}"
      printf 'export %s=%q\n' "$name" "$value"
    done < <(service_env "$s") >"$envfile"
  )
  launch "$s" "$envfile" "$bin"
  printf '%s\n' "$want" >"$idfile"
}

# launch NAME ENVFILE BIN: BIN as daemon NAME with exactly the environment in ENVFILE.
launch() {
  # shellcheck disable=SC2016 # expanded by the inner shell
  start_daemon "$1" "$LOG_DIR/$1.log" env -i /bin/bash -c 'source "$1" && exec "$2"' "$1" "$2" "$3"
}

# build_services SERVICE...: cargo build them for $PROFILE (APP_SKIP_BUILD=1: only those
# whose binary is missing).
build_services() {
  local s
  if [[ "${APP_SKIP_BUILD:-}" == 1 ]]; then
    local -a missing=()
    for s in "$@"; do [[ -x "$(service_bin "$s")" ]] || missing+=("$s"); done
    if ((${#missing[@]} == 0)); then
      log "APP_SKIP_BUILD=1: no cargo build, using the existing binaries in ${TARGET_DIR#"$ROOT"/}/$PROFILE/"
      return 0
    fi
    log "APP_SKIP_BUILD=1, but ${TARGET_DIR#"$ROOT"/}/$PROFILE/ has no binary of: ${missing[*]}; building those"
    set -- "${missing[@]}"
  fi
  local -a build_cmd=(cargo build)
  if [[ "$PROFILE" == release ]]; then build_cmd+=(--release); else build_cmd+=(--bins); fi
  for s in "$@"; do build_cmd+=(-p "$(package_name "$s")"); done
  local build_log="$LOG_DIR/app-build.log" build_rc=0 build_start=$SECONDS
  log "building: ${build_cmd[*]} (can take minutes the first time; log ${build_log#"$ROOT"/})"
  "${build_cmd[@]}" 2>&1 | tee "$build_log" >&2 || build_rc=$?
  ((build_rc == 0)) || fail_with_log "$build_log" "${build_cmd[*]} failed (exit $build_rc)"
  log "built in $((SECONDS - build_start))s"
}

readyz_code() {
  curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://127.0.0.1:$1/readyz" 2>/dev/null || true
}

wait_ready() {
  local s="$1" port deadline code=""
  port="$(service_port "$s")"
  deadline=$((SECONDS + READY_TIMEOUT))
  log "waiting for $s: GET http://127.0.0.1:$port/readyz = 200 (up to ${READY_TIMEOUT}s)"
  while :; do
    code="$(readyz_code "$port")"
    [[ "$code" == 200 ]] && return 0
    daemon_running "$s" || fail_with_log "$LOG_DIR/$s.log" "$s exited while starting"
    ((SECONDS < deadline)) || fail_with_log "$LOG_DIR/$s.log" "$s not ready within ${READY_TIMEOUT}s (last /readyz status: ${code:-no answer})"
    sleep 0.5
  done
}

cmd_up() {
  local start=$SECONDS s
  local -a services packages
  case "$PROFILE" in
    release | debug) ;;
    *) die "APP_PROFILE must be release or debug (got '$PROFILE')" ;;
  esac
  mapfile -t services < <(existing_services)

  # 1. infrastructure (+ stripe-mock when no real Stripe key is given)
  local -a components=(ferretdb nats redis)
  if [[ -z "${STRIPE_KEY:-}" ]]; then
    components+=(stripe-mock)
  fi
  "${INFRA[@]}" up "${components[@]}"
  local caller_stripe_base="${STRIPE_API_BASE:-}"
  eval "$("${INFRA[@]}" env)"
  if [[ -z "${STRIPE_KEY:-}" ]]; then
    STRIPE_KEY=sk_test_123
    STRIPE_API_BASE="http://$INFRA_HOST:$STRIPE_MOCK_PORT"
    log "payments uses stripe-mock: STRIPE_KEY=$STRIPE_KEY STRIPE_API_BASE=$STRIPE_API_BASE"
  else
    # a real key: never point it at the mock, keep whatever base the caller gave (or none)
    STRIPE_API_BASE="$caller_stripe_base"
  fi
  export STRIPE_KEY STRIPE_API_BASE MONGO_URL NATS_URL REDIS_URL
  APP_JWT_KEY="$(kept_key JWT_KEY jwt_key "a JWT key")"
  APP_CLIENT_ADDRESS_KEY="$(kept_key CLIENT_ADDRESS_KEY client_address_key "the key with which the client vouches for browser addresses to auth")"
  APP_CSRF_KEY="$(kept_key CSRF_KEY csrf_key "the key behind the client's CSRF form tokens")"

  # 2. build
  if ((${#services[@]} == 0)); then
    warn "no service crates found (looked for ${SERVICES[*]/%//Cargo.toml}); starting nginx only"
  else
    build_services "${services[@]}"
  fi
  packages=("${services[@]}")

  # 3. services: each replica; replicas beyond the wanted count (an earlier --replicas) stop
  local r
  for s in "${packages[@]}"; do
    while IFS= read -r r; do start_service "$r"; done < <(replicas_of "$s")
    while IFS= read -r r; do
      (($(replica_of "$r") > REPLICAS[$s])) && stop_replica "$r"
    done < <(running_replicas "$s")
  done

  # 4. nginx (reloaded if the template or the replicas changed)
  write_upstreams
  "${INFRA[@]}" up nginx

  # 5. readiness
  for s in "${packages[@]}"; do
    while IFS= read -r r; do wait_ready "$r"; done < <(replicas_of "$s")
  done

  local missing=()
  for s in "${SERVICES[@]}"; do
    [[ " ${packages[*]} " == *" $s "* ]] || missing+=("$s")
  done
  echo
  echo "The app is up in $((SECONDS - start))s:  http://localhost:$NGINX_PORT"
  if ((${#packages[@]} > 0)); then
    local counts=()
    for s in "${packages[@]}"; do counts+=("$s(${REPLICAS[$s]})"); done
    echo "  services: ${counts[*]} ($PROFILE build)"
  fi
  if ((${#missing[@]} > 0)); then echo "  not built yet (nginx answers 502 for them): ${missing[*]}"; fi
  echo "  logs:     scripts/app.sh logs NAME [-f]   (.data/logs/NAME.log)"
  echo "  stop:     scripts/app.sh down   (services + nginx);  scripts/infra.sh down   (databases, NATS, Redis, stripe-mock)"
}

# stop_replica NAME: SIGTERM (graceful shutdown), forget how it was launched.
stop_replica() {
  stop_daemon "$1"
  rm -f "$RUN_DIR/$1.launch" "$RUN_DIR/$1.binary" "$RUN_DIR/$1.env"
}

cmd_down() {
  local s r
  for s in "${SERVICES[@]}"; do
    stop_replica "$s"
    while IFS= read -r r; do stop_replica "$r"; done < <(running_replicas "$s")
  done
  rm -f "$RUN_DIR/app.upstreams"
  "${INFRA[@]}" down nginx
  log "app stopped; infrastructure still running (scripts/infra.sh down to stop it)"
}

cmd_status() {
  local s r pid port code bin rc=0
  for r in $(for s in "${SERVICES[@]}"; do
    echo "$s"
    running_replicas "$s" | grep -vx "$s"
  done); do
    s="$r"
    port="$(service_port "$s")"
    if pid="$(daemon_pid "$s")"; then
      code="$(readyz_code "$port")"
      bin="$(awk '$1 == "binary" { print $2 }' "$RUN_DIR/$s.launch" 2>/dev/null || true)"
      printf '%-12s %-15s pid %-8s http://127.0.0.1:%s (readyz %s) metrics http://127.0.0.1:%s/metrics %s\n' "$s" "up" "$pid" "$port" "${code:-no answer}" "$(service_metrics_port "$s")" "${bin#"$ROOT"/}"
      [[ "$code" == 200 ]] || rc=1
    elif [[ -f "$ROOT/$s/Cargo.toml" ]]; then
      printf '%-12s %s\n' "$s" "down"
      rc=1
    else
      printf '%-12s %s\n' "$s" "down (no crate yet)"
    fi
  done
  "${INFRA[@]}" status || rc=1
  return "$rc"
}

# A rolling restart, one replica at a time: out of nginx's rotation (reload: nginx's old workers
# finish the requests they hold), SIGTERM (the service stops accepting and finishes what it
# serves), started again (same binary and settings), ready, back in rotation.
cmd_restart() {
  local s r start=$SECONDS
  local -a targets=("$@")
  ((${#targets[@]} > 0)) || mapfile -t targets < <(existing_services)
  for s in "${targets[@]}"; do
    [[ " ${SERVICES[*]} " == *" $s "* ]] || die "restart: unknown service '$s' (services: ${SERVICES[*]})"
    daemon_running "$s" || die "restart: $s is not running (scripts/app.sh up first)"
  done
  replicas_from_pidfiles
  for s in "${targets[@]}"; do
    while IFS= read -r r; do
      restart_replica "$r"
    done < <(replicas_of "$s")
  done
  write_upstreams
  "${INFRA[@]}" up nginx
  log "rolling restart of ${targets[*]} done in $((SECONDS - start))s"
}

# restart_replica NAME: the same binary with the same environment file it was started with.
restart_replica() {
  local r="$1" envfile="$RUN_DIR/$1.env" bin
  [[ -f "$envfile" ]] || die "restart: no $envfile (was $r started by scripts/app.sh up?)"
  bin="$(awk '$1 == "binary" { print $2 }' "$RUN_DIR/$r.launch" 2>/dev/null || true)"
  [[ -n "$bin" ]] || die "restart: no binary recorded in $RUN_DIR/$r.launch"
  write_upstreams "$r"
  "${INFRA[@]}" up nginx >/dev/null
  stop_daemon "$r"
  launch "$r" "$envfile" "$bin"
  wait_ready "$r"
}

cmd_logs() {
  local name="${1:-}" follow="${2:-}"
  [[ -n "$name" ]] || die "usage: scripts/app.sh logs NAME [-f]"
  local logf="$LOG_DIR/$name.log"
  [[ -f "$logf" ]] || die "no log file $logf (known: $(find "$LOG_DIR" -maxdepth 1 -name '*.log' -printf '%f\n' | sed 's/\.log$//' | sort | tr '\n' ' '))"
  if [[ "$follow" == "-f" ]]; then
    exec tail -n 200 -F "$logf"
  fi
  tail -n 200 "$logf"
}

main() {
  local cmd="${1:-up}"
  shift || true
  case "$cmd" in
    up | start)
      local spec="${APP_REPLICAS:-}"
      while (($# > 0)); do
        case "$1" in
          --replicas)
            [[ $# -ge 2 ]] || die "--replicas needs a SPEC (e.g. 2, or 2,client=1)"
            spec="$2"
            shift 2
            ;;
          *) die "unknown argument '$1' for up (see scripts/app.sh --help)" ;;
        esac
      done
      parse_replicas "$spec"
      with_lock app
      cmd_up
      ;;
    restart)
      with_lock app
      cmd_restart "$@"
      ;;
    down | stop)
      with_lock app
      cmd_down
      ;;
    status) cmd_status ;;
    logs) cmd_logs "$@" ;;
    -h | --help | help) usage ;;
    *)
      echo "unknown command '$cmd'" >&2
      usage
      ;;
  esac
}

main "$@"
