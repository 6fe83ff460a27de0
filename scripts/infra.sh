#!/usr/bin/env bash
# Local infrastructure on loopback for tests and the local app.
#
#   scripts/infra.sh up      [COMPONENT...]   install if needed, start, wait until ready
#                                             (default: ferretdb nats redis)
#   scripts/infra.sh down    [COMPONENT...]   stop (default: everything this script knows)
#   scripts/infra.sh restart COMPONENT...     stop + start + wait (fault-injection tests)
#   scripts/infra.sh kill    COMPONENT...     SIGKILL, no cleanup (crash simulation)
#   scripts/infra.sh status  [COMPONENT...]   up/down of each component; exit 1 if a named
#                                             (default: ferretdb nats redis) one is down
#   scripts/infra.sh env                      print `export ...` lines: eval "$(scripts/infra.sh env)"
#   scripts/infra.sh pid     COMPONENT        print the pid of a running component
#
# Components and loopback ports:
#   ferretdb     127.0.0.1:27117  MongoDB wire protocol (FerretDB v1.24.2; SQLite backend in .data/ferretdb/,
#                                 or PostgreSQL, see INFRA_DB_BACKEND); its Prometheus metrics (commands
#                                 served, by command) at http://127.0.0.1:27118/debug/metrics
#   postgresql   127.0.0.1:25432  PostgreSQL 15 (Debian), FerretDB's store with INFRA_DB_BACKEND=postgresql
#                                 (data .data/postgresql/data/, run as the unprivileged user
#                                 INFRA_PG_USER, default ticketing-pg, created if missing); started by
#                                 `up ferretdb` when needed
#   nats         127.0.0.1:24222  NATS with JetStream (store .data/nats/), monitoring 127.0.0.1:28222
#   redis        127.0.0.1:26379  Redis with AOF persistence (.data/redis/)
#   stripe-mock  127.0.0.1:12111  Stripe API mock over HTTP (HTTPS on 12112); only when asked for
#   nginx        127.0.0.1:8080   reverse proxy of the local app (normally started by scripts/app.sh)
#   chromedriver 127.0.0.1:29515  WebDriver for the browser tests (Debian chromium + chromium-driver);
#                                 only when asked for (scripts/e2e.sh); `env` then exports WEBDRIVER_URL
# Logs: .data/logs/<component>.log.  Environment: INFRA_READY_TIMEOUT (seconds, default 60);
# INFRA_DB_BACKEND=sqlite|postgresql: FerretDB's backend. Unset, an instance keeps the backend it was
# last started with (.data/ferretdb.backend), else sqlite; every instance (INFRA_INSTANCE) has its own
# database either way. INFRA_FERRETDB_GOGC: the Go garbage collector's target for FerretDB (GOGC,
# default 400; Go's own default is 100).
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

FERRETDB_VERSION=v1.24.2
# What install_ferretdb builds: the version plus our patches in scripts/ferretdb/, applied in this
# order (each file says what it changes and why). A new value rebuilds.
FERRETDB_PATCHES=(id-index-lookup sqlite-write-turns collection-create-orphan id-in-lookup)
FERRETDB_BUILD="$FERRETDB_VERSION$(printf '+%s' "${FERRETDB_PATCHES[@]}")"
STRIPE_MOCK_VERSION=v0.203.0 # newest in `go list -m -versions github.com/stripe/stripe-mock`

# postgresql last: `down` stops FerretDB, its client, before it.
ALL_COMPONENTS=(ferretdb nats redis stripe-mock nginx chromedriver postgresql)
DEFAULT_COMPONENTS=(ferretdb nats redis)
READY_TIMEOUT="${INFRA_READY_TIMEOUT:-60}"
NGINX_TEMPLATE="$ROOT/infra/local/nginx.conf"
NGINX_DIR="$DATA_DIR/nginx"
NGINX_CONF="$NGINX_DIR/nginx.conf"

logfile_of() { printf '%s/%s.log' "$LOG_DIR" "$1"; }

# ============================================================ FerretDB's backend
BACKEND_FILE="$DATA_DIR/ferretdb.backend"
PG_BIN="${INFRA_PG_BIN:-/usr/lib/postgresql/15/bin}"
PG_USER="${INFRA_PG_USER:-ticketing-pg}"
PG_DIR="$DATA_DIR/postgresql"
# The role initdb creates (trust on loopback only, like the other components: no secrets) and the
# database FerretDB keeps its MongoDB databases in (as PostgreSQL schemas).
PG_ROLE=ferretdb
PG_DATABASE=ferretdb

# db_backend: the backend FerretDB runs (or is to run) on: INFRA_DB_BACKEND, else the one this
# instance last started with, else sqlite.
db_backend() {
  local backend="${INFRA_DB_BACKEND:-}"
  if [[ -z "$backend" && -s "$BACKEND_FILE" ]]; then backend="$(<"$BACKEND_FILE")"; fi
  backend="${backend:-sqlite}"
  case "$backend" in
    sqlite | postgresql) printf '%s\n' "$backend" ;;
    *) die "INFRA_DB_BACKEND must be sqlite or postgresql (got '$backend')" ;;
  esac
}

postgresql_url() { printf 'postgres://%s@%s:%s/%s' "$PG_ROLE" "$INFRA_HOST" "$POSTGRES_PORT" "$PG_DATABASE"; }

# ============================================================ installation
ensure_curl() { ensure_apt_packages curl curl; }

# ferretdb --version prints "version: v1.24.2" among other lines.
ferretdb_version() { "$1" --version 2>/dev/null | sed -n 's/^version: //p'; }

install_ferretdb() {
  local bin="$BIN_DIR/ferretdb" stamp="$BIN_DIR/ferretdb.build"
  if [[ -x "$bin" ]] && [[ "$(ferretdb_version "$bin")" == "$FERRETDB_VERSION" ]] &&
    [[ "$(cat "$stamp" 2>/dev/null || true)" == "$FERRETDB_BUILD" ]]; then
    return 0
  fi
  require_go
  local logfile="$LOG_DIR/install-ferretdb.log" start=$SECONDS src build
  log "installing FerretDB $FERRETDB_VERSION (go build from the module source, first time only, ~1-3 min; log ${logfile#"$ROOT"/})"
  : >"$logfile"
  # `go install github.com/FerretDB/FerretDB/cmd/ferretdb@$FERRETDB_VERSION` builds a binary that
  # panics at start-up ("Invalid build/version/version.txt file content"): the module zip lacks
  # the generated build/version/version.txt.  So: fetch the module, add that file, go build.
  # GOFLAGS/GOWORK from the caller's environment must not change how FerretDB is built.
  local -x GOFLAGS='' GOWORK=off
  src="$(cd "$DATA_DIR" && go mod download -json "github.com/FerretDB/FerretDB@$FERRETDB_VERSION" 2>>"$logfile" |
    sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p')" || true
  [[ -n "$src" && -d "$src" ]] || fail_with_log "$logfile" "go mod download github.com/FerretDB/FerretDB@$FERRETDB_VERSION failed"
  build="$DATA_DIR/build/ferretdb-$FERRETDB_VERSION"
  rm -rf "$build"
  mkdir -p "$build"
  cp -R "$src/." "$build/"
  chmod -R u+w "$build"
  printf '%s\n' "$FERRETDB_VERSION" >"$build/build/version/version.txt"
  printf 'go-build\n' >"$build/build/version/package.txt"
  # Our patches (scripts/ferretdb/*.patch). The ceiling keeps git from taking $build for a folder of
  # an enclosing repository (the project's own, with .data inside it): there `git apply` would
  # resolve the paths from that repository's root, skip them all and still succeed.
  local name patch
  for name in "${FERRETDB_PATCHES[@]}"; do
    patch="$ROOT/scripts/ferretdb/$name.patch"
    log "patching FerretDB: $name (${patch#"$ROOT"/})"
    if ! (cd "$build" && GIT_CEILING_DIRECTORIES="$(dirname "$build")" git apply -p1 "$patch") >>"$logfile" 2>&1; then
      fail_with_log "$logfile" "could not apply ${patch#"$ROOT"/} to FerretDB $FERRETDB_VERSION"
    fi
  done
  if ! grep -q 'IDColumn = DefaultColumn + `->"_id"`' "$build/internal/backends/sqlite/metadata/metadata.go" ||
    ! grep -q 'takeWriteTurn(ctx, c.dbName)' "$build/internal/backends/sqlite/collection.go" ||
    ! grep -q 'CREATE TABLE IF NOT EXISTS %q (' "$build/internal/backends/sqlite/metadata/registry.go" ||
    ! grep -q 'if ids := idsOfIn(v); ids != nil {' "$build/internal/backends/sqlite/collection.go"; then
    fail_with_log "$logfile" "FerretDB's source does not show the patches after applying them"
  fi
  if ! (cd "$build" && go build -buildvcs=false -trimpath -o "$bin.tmp" ./cmd/ferretdb) >>"$logfile" 2>&1; then
    fail_with_log "$logfile" "building FerretDB $FERRETDB_VERSION failed"
  fi
  mv -f "$bin.tmp" "$bin"
  printf '%s\n' "$FERRETDB_BUILD" >"$stamp"
  rm -rf "$build"
  rmdir "$DATA_DIR/build" 2>/dev/null || true
  [[ "$(ferretdb_version "$bin")" == "$FERRETDB_VERSION" ]] ||
    fail_with_log "$logfile" "built $bin but it does not report version $FERRETDB_VERSION"
  log "installed FerretDB $FERRETDB_VERSION into ${bin#"$ROOT"/} in $((SECONDS - start))s"
}

# stripe-mock reports "master" for --version, so the version comes from the Go build info.
stripe_mock_version() {
  go version -m "$1" 2>/dev/null | awk '$1 == "mod" && $2 == "github.com/stripe/stripe-mock" { print $3 }'
}

install_stripe_mock() {
  local bin="$BIN_DIR/stripe-mock"
  require_go
  if [[ -x "$bin" ]] && [[ "$(stripe_mock_version "$bin")" == "$STRIPE_MOCK_VERSION" ]]; then
    return 0
  fi
  local logfile="$LOG_DIR/install-stripe-mock.log" start=$SECONDS
  log "installing stripe-mock $STRIPE_MOCK_VERSION (go install, first time only, ~1 min; log ${logfile#"$ROOT"/})"
  : >"$logfile"
  if ! (cd "$DATA_DIR" && GOFLAGS='' GOWORK=off GOBIN="$BIN_DIR" go install -buildvcs=false "github.com/stripe/stripe-mock@$STRIPE_MOCK_VERSION") >>"$logfile" 2>&1; then
    fail_with_log "$logfile" "go install github.com/stripe/stripe-mock@$STRIPE_MOCK_VERSION failed"
  fi
  [[ "$(stripe_mock_version "$bin")" == "$STRIPE_MOCK_VERSION" ]] ||
    fail_with_log "$logfile" "installed $bin but its build info does not say $STRIPE_MOCK_VERSION"
  log "installed stripe-mock $STRIPE_MOCK_VERSION into ${bin#"$ROOT"/} in $((SECONDS - start))s"
}

install_nats() { ensure_apt_packages nats-server nats-server; }

# PostgreSQL 15 from Debian (its binaries live in /usr/lib/postgresql/15/bin, not on PATH).
install_postgresql() {
  [[ -x "$PG_BIN/postgres" && -x "$PG_BIN/initdb" && -x "$PG_BIN/pg_isready" ]] && return 0
  log "PostgreSQL not found in $PG_BIN: installing the Debian package postgresql-15"
  PATH="$PG_BIN:$PATH" ensure_apt_packages pg_isready postgresql-15
  [[ -x "$PG_BIN/postgres" ]] || die "installed postgresql-15 but $PG_BIN/postgres is missing (set INFRA_PG_BIN)"
}

# The unprivileged system user PostgreSQL runs as (it refuses to run as root).
ensure_postgresql_user() {
  [[ "$(id -u)" -eq 0 ]] || return 0
  if ! id -u "$PG_USER" >/dev/null 2>&1; then
    log "creating the system user $PG_USER for PostgreSQL (it refuses to run as root)"
    useradd --system --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin "$PG_USER" ||
      die "could not create the system user $PG_USER (useradd failed; create it by hand or set INFRA_PG_USER)"
  fi
  PG_AS=(setpriv "--reuid=$(id -u "$PG_USER")" "--regid=$(id -g "$PG_USER")" --init-groups --reset-env --)
}

# The prefix that runs a command as $PG_USER: setpriv execs it in place (no fork, unlike runuser),
# so a daemon started through it keeps the pid start_daemon records. Not root: as the caller.
# Set by ensure_postgresql_user.
PG_AS=()
as_pg_user() { "${PG_AS[@]}" "$@"; }
install_redis() {
  ensure_apt_packages redis-server redis-server
  ensure_apt_packages redis-cli redis-tools
}
install_nginx() { ensure_apt_packages nginx nginx; }
install_chromedriver() {
  # chromium-driver depends on chromium: the first call installs both when chromium is missing.
  ensure_apt_packages chromium chromium chromium-driver
  ensure_apt_packages chromedriver chromium-driver
}

# ============================================================ readiness probes
ready_ferretdb() { mongo_ping "$INFRA_HOST" "$FERRETDB_PORT"; }
ready_postgresql() { "$PG_BIN/pg_isready" -q -h "$INFRA_HOST" -p "$POSTGRES_PORT" -U "$PG_ROLE" -d postgres; }
ready_nats() {
  # JetStream must be up too, not only the client port.
  local body
  body="$(curl -fsS --max-time 2 "http://$INFRA_HOST:$NATS_MONITOR_PORT/healthz?js-enabled-only=true")" || return 1
  [[ "$body" == *'"ok"'* ]]
}
ready_redis() { [[ "$(redis-cli -h "$INFRA_HOST" -p "$REDIS_PORT" ping 2>/dev/null)" == "PONG" ]]; }
ready_stripe_mock() {
  curl -fsS --max-time 2 -o /dev/null -u sk_test_123: "http://$INFRA_HOST:$STRIPE_MOCK_PORT/v1/customers"
}
ready_nginx() { port_open "$INFRA_HOST" "$NGINX_PORT"; }
ready_chromedriver() {
  # {"value":{"ready":true,"message":"ChromeDriver ready for new sessions.",...}}
  local body
  body="$(curl -fsS --max-time 2 "http://$INFRA_HOST:$CHROMEDRIVER_PORT/status")" || return 1
  [[ "$body" =~ \"ready\"[[:space:]]*:[[:space:]]*true ]]
}

port_of() {
  case "$1" in
    ferretdb) echo "$FERRETDB_PORT" ;;
    nats) echo "$NATS_PORT" ;;
    redis) echo "$REDIS_PORT" ;;
    stripe-mock) echo "$STRIPE_MOCK_PORT" ;;
    nginx) echo "$NGINX_PORT" ;;
    chromedriver) echo "$CHROMEDRIVER_PORT" ;;
    postgresql) echo "$POSTGRES_PORT" ;;
  esac
}

describe() {
  case "$1" in
    ferretdb)
      if [[ "$(db_backend)" == postgresql ]]; then
        echo "mongodb://$INFRA_HOST:$FERRETDB_PORT (FerretDB $FERRETDB_VERSION, PostgreSQL $(postgresql_url), metrics http://$INFRA_HOST:$FERRETDB_METRICS_PORT/debug/metrics)"
      else
        echo "mongodb://$INFRA_HOST:$FERRETDB_PORT (FerretDB $FERRETDB_VERSION, SQLite in ${DATA_DIR#"$ROOT"/}/ferretdb, metrics http://$INFRA_HOST:$FERRETDB_METRICS_PORT/debug/metrics)"
      fi
      ;;
    postgresql) echo "postgres://$INFRA_HOST:$POSTGRES_PORT (PostgreSQL $("$PG_BIN/postgres" --version 2>/dev/null | awk '{ print $3 }') as user $PG_USER, data in ${PG_DIR#"$ROOT"/}/data)" ;;
    nats) echo "nats://$INFRA_HOST:$NATS_PORT (JetStream, monitoring http://$INFRA_HOST:$NATS_MONITOR_PORT)" ;;
    redis) echo "redis://$INFRA_HOST:$REDIS_PORT (AOF in .data/redis)" ;;
    stripe-mock) echo "http://$INFRA_HOST:$STRIPE_MOCK_PORT (stripe-mock $STRIPE_MOCK_VERSION)" ;;
    nginx) echo "http://$INFRA_HOST:$NGINX_PORT (reverse proxy, config .data/nginx/nginx.conf)" ;;
    chromedriver) echo "http://$INFRA_HOST:$CHROMEDRIVER_PORT (WebDriver; $(browser_versions))" ;;
  esac
}

# Refuse to start when a foreign process already holds our port.
check_port_free() {
  local name="$1" port="$2"
  if port_open "$INFRA_HOST" "$port"; then
    local owner
    owner="$(port_owner "$port")"
    die "cannot start $name: $INFRA_HOST:$port is already in use by a process this script did not start${owner:+:
$owner}
(stop it, or if it is a leftover of ours, kill that pid)"
  fi
}

# ============================================================ start functions
start_ferretdb() {
  install_ferretdb
  local logfile backend running
  logfile="$(logfile_of ferretdb)"
  backend="$(db_backend)"
  local -a store=(--handler=sqlite "--sqlite-url=file:$DATA_DIR/ferretdb/")
  if [[ "$backend" == postgresql ]]; then
    store=(--handler=postgresql "--postgresql-url=$(postgresql_url)")
    log "FerretDB's backend is PostgreSQL (INFRA_DB_BACKEND, or this instance's last start): starting postgresql first"
    start_postgresql
    log "postgresql ready: $(describe postgresql)"
  fi
  mkdir -p "$DATA_DIR/ferretdb/state"
  if daemon_running ferretdb; then
    running="$(cat "$BACKEND_FILE" 2>/dev/null || echo sqlite)"
    [[ "$running" == "$backend" ]] ||
      die "ferretdb is running on $running, not $backend: scripts/infra.sh down ferretdb first"
  else
    check_port_free ferretdb "$FERRETDB_PORT"
    check_port_free "ferretdb (metrics)" "$FERRETDB_METRICS_PORT"
  fi
  printf '%s\n' "$backend" >"$BACKEND_FILE"
  # FerretDB allocates a lot per command (documents decoded, JSON built; its profile is largely the
  # garbage collector and JSON), so Go's default GOGC of 100 collects often: at 400 it spends 20-30%
  # less CPU per command
  # (pymongo, 10,000 `_id` finds and 4,000 inserts: 0.40-0.43 -> 0.26-0.31 ms and 0.38-0.39 ->
  # 0.33-0.35 ms per command), for a heap a few tens of MB larger (README, "What limits it").
  local gogc="${INFRA_FERRETDB_GOGC:-400}"
  [[ "$gogc" =~ ^([0-9]+|off)$ ]] || die "INFRA_FERRETDB_GOGC must be a number or off (got '$gogc')"
  start_daemon ferretdb "$logfile" env "GOGC=$gogc" "$BIN_DIR/ferretdb" \
    "${store[@]}" \
    "--listen-addr=$INFRA_HOST:$FERRETDB_PORT" \
    "--state-dir=$DATA_DIR/ferretdb/state" \
    --telemetry=disable \
    "--debug-addr=$INFRA_HOST:$FERRETDB_METRICS_PORT" \
    --log-level=warn
  wait_for_port "$INFRA_HOST" "$FERRETDB_PORT" ferretdb "$logfile" "$READY_TIMEOUT"
  wait_until ferretdb "$logfile" "$READY_TIMEOUT" "MongoDB ping on $INFRA_HOST:$FERRETDB_PORT" ready_ferretdb
}

# PostgreSQL for FerretDB: initdb on first use, then `postgres` as $PG_USER on loopback only
# (TCP; no Unix socket), and the database FerretDB uses.
start_postgresql() {
  install_postgresql
  ensure_postgresql_user
  local logfile data="$PG_DIR/data"
  logfile="$(logfile_of postgresql)"
  mkdir -p "$PG_DIR"
  if [[ "$(id -u)" -eq 0 ]]; then
    chown "$PG_USER:" "$PG_DIR"
    # The user must be able to reach its data directory through every parent.
    as_pg_user test -x "$PG_DIR" ||
      die "the PostgreSQL user $PG_USER cannot reach $PG_DIR: a parent directory is not searchable by others (chmod o+x it, or set INFRA_PG_USER)"
  fi
  if [[ ! -s "$data/PG_VERSION" ]]; then
    log "creating the PostgreSQL cluster in ${data#"$ROOT"/} (initdb as $PG_USER, first time only; log ${logfile#"$ROOT"/})"
    rm -rf "$data"
    printf '\n===== %s initdb %s\n' "$(date '+%Y-%m-%d %H:%M:%S')" "$data" >>"$logfile"
    if ! as_pg_user "$PG_BIN/initdb" -D "$data" -U "$PG_ROLE" --auth=trust --encoding=UTF8 --locale=C.UTF-8 >>"$logfile" 2>&1; then
      fail_with_log "$logfile" "initdb of $data failed"
    fi
  fi
  daemon_running postgresql || check_port_free postgresql "$POSTGRES_PORT"
  # fsync stays on: the figures must be those of a durable store, like SQLite's.
  start_daemon postgresql "$logfile" "${PG_AS[@]}" "$PG_BIN/postgres" -D "$data" \
    -c listen_addresses="$INFRA_HOST" -p "$POSTGRES_PORT" -c unix_socket_directories= \
    -c max_connections=200
  wait_for_port "$INFRA_HOST" "$POSTGRES_PORT" postgresql "$logfile" "$READY_TIMEOUT"
  wait_until postgresql "$logfile" "$READY_TIMEOUT" "pg_isready -h $INFRA_HOST -p $POSTGRES_PORT" ready_postgresql
  local exists
  exists="$("$PG_BIN/psql" -h "$INFRA_HOST" -p "$POSTGRES_PORT" -U "$PG_ROLE" -d postgres -tAc \
    "SELECT 1 FROM pg_database WHERE datname = '$PG_DATABASE'" 2>>"$logfile")" ||
    fail_with_log "$logfile" "could not query PostgreSQL's databases on $INFRA_HOST:$POSTGRES_PORT"
  if [[ "$exists" != 1 ]]; then
    log "creating the PostgreSQL database $PG_DATABASE for FerretDB"
    "$PG_BIN/createdb" -h "$INFRA_HOST" -p "$POSTGRES_PORT" -U "$PG_ROLE" "$PG_DATABASE" >>"$logfile" 2>&1 ||
      fail_with_log "$logfile" "createdb $PG_DATABASE failed"
  fi
}

# postgres in fast shutdown (SIGINT: clients disconnected, no waiting for them), then the usual stop.
stop_postgresql() {
  local pid
  if pid="$(daemon_pid postgresql)"; then
    log "stopping postgresql (pid $pid, fast shutdown)"
    kill -INT "$pid" 2>/dev/null || true
    wait_gone "$pid" 150
  fi
  stop_daemon postgresql
}

start_nats() {
  install_nats
  ensure_curl
  local logfile
  logfile="$(logfile_of nats)"
  mkdir -p "$DATA_DIR/nats"
  daemon_running nats || {
    check_port_free nats "$NATS_PORT"
    check_port_free nats-monitoring "$NATS_MONITOR_PORT"
  }
  # -a binds the client port; the monitoring port binds to the same host.
  start_daemon nats "$logfile" nats-server \
    -js -sd "$DATA_DIR/nats" \
    -a "$INFRA_HOST" -p "$NATS_PORT" -m "$NATS_MONITOR_PORT" \
    -n ticketing-local
  wait_for_port "$INFRA_HOST" "$NATS_PORT" nats "$logfile" "$READY_TIMEOUT"
  wait_until nats "$logfile" "$READY_TIMEOUT" "http://$INFRA_HOST:$NATS_MONITOR_PORT/healthz?js-enabled-only=true" ready_nats
}

start_redis() {
  install_redis
  local logfile
  logfile="$(logfile_of redis)"
  mkdir -p "$DATA_DIR/redis"
  daemon_running redis || check_port_free redis "$REDIS_PORT"
  # AOF (appendonly) so that expiration's delayed jobs survive a restart; no RDB snapshots.
  start_daemon redis "$logfile" redis-server \
    --bind "$INFRA_HOST" --port "$REDIS_PORT" \
    --dir "$DATA_DIR/redis" \
    --appendonly yes --save '' \
    --daemonize no --protected-mode yes
  wait_for_port "$INFRA_HOST" "$REDIS_PORT" redis "$logfile" "$READY_TIMEOUT"
  wait_until redis "$logfile" "$READY_TIMEOUT" "redis-cli -p $REDIS_PORT ping = PONG" ready_redis
}

start_stripe_mock() {
  install_stripe_mock
  ensure_curl
  local logfile
  logfile="$(logfile_of stripe-mock)"
  daemon_running stripe-mock || {
    check_port_free stripe-mock "$STRIPE_MOCK_PORT"
    check_port_free stripe-mock-https "$STRIPE_MOCK_HTTPS_PORT"
  }
  start_daemon stripe-mock "$logfile" "$BIN_DIR/stripe-mock" \
    -http-addr "$INFRA_HOST:$STRIPE_MOCK_PORT" \
    -https-addr "$INFRA_HOST:$STRIPE_MOCK_HTTPS_PORT"
  wait_for_port "$INFRA_HOST" "$STRIPE_MOCK_PORT" stripe-mock "$logfile" "$READY_TIMEOUT"
  wait_until stripe-mock "$logfile" "$READY_TIMEOUT" "GET http://$INFRA_HOST:$STRIPE_MOCK_PORT/v1/customers = 200" ready_stripe_mock
}

# Generate .data/nginx/nginx.conf from infra/local/nginx.conf (placeholder __DATA_DIR__).
# Prints "changed" when the generated file differs from the previous one.
render_nginx_conf() {
  [[ -f "$NGINX_TEMPLATE" ]] || die "missing nginx template $NGINX_TEMPLATE"
  mkdir -p "$NGINX_DIR/tmp"
  local content
  content="$(<"$NGINX_TEMPLATE")"
  content="${content//__DATA_DIR__/"$DATA_DIR"}"
  # Another instance (INFRA_INSTANCE) shifts the proxy's and the services' loopback ports.
  if ((PORT_OFFSET != 0)); then
    local port
    for port in 3000 3001 3002 3003 3004 3005 8080; do
      content="${content//127.0.0.1:$port;/127.0.0.1:$((port + PORT_OFFSET));}"
    done
  fi
  # The replicas in rotation (scripts/app.sh writes .data/run/app.upstreams: per service its first
  # replica's port, then the ports nginx balances across).
  if [[ -f "$RUN_DIR/app.upstreams" ]]; then
    local first ports servers p
    while read -r first ports; do
      [[ "$first" =~ ^[0-9]+$ ]] || continue
      servers=""
      for p in $ports; do servers+="${servers:+ }server 127.0.0.1:$p;"; done
      content="${content//server 127.0.0.1:$first;/$servers}"
    done <"$RUN_DIR/app.upstreams"
  fi
  printf '# GENERATED from infra/local/nginx.conf by scripts/infra.sh; do not edit.\n%s\n' "$content" >"$NGINX_CONF.new"
  if [[ -f "$NGINX_CONF" ]] && cmp -s "$NGINX_CONF" "$NGINX_CONF.new"; then
    rm -f "$NGINX_CONF.new"
  else
    mv -f "$NGINX_CONF.new" "$NGINX_CONF"
    echo changed
  fi
}

nginx_cmd() { nginx -e stderr -p "$NGINX_DIR/" -c "$NGINX_CONF" "$@"; }

start_nginx() {
  install_nginx
  local logfile changed pid
  logfile="$(logfile_of nginx)"
  changed="$(render_nginx_conf)"
  if ! nginx_cmd -t -q >>"$logfile" 2>&1; then
    fail_with_log "$logfile" "nginx rejected $NGINX_CONF (generated from ${NGINX_TEMPLATE#"$ROOT"/})"
  fi
  if pid="$(daemon_pid nginx)"; then
    # A running nginx keeps its access log open: after moving it, USR1 makes nginx reopen it.
    if rotate_log "$LOG_DIR/nginx-access.log"; then kill -USR1 "$pid"; fi
    if [[ -n "$changed" ]]; then
      log "nginx config changed: reloading nginx (pid $pid)"
      kill -HUP "$pid"
      sleep 0.5
    else
      log "nginx already running (pid $pid)"
    fi
  else
    check_port_free nginx "$NGINX_PORT"
    rotate_log "$LOG_DIR/nginx-access.log" || true
    # `daemon off;` is in the config: nginx stays in the foreground under start_daemon.
    start_daemon nginx "$logfile" nginx -e stderr -p "$NGINX_DIR/" -c "$NGINX_CONF"
  fi
  wait_for_port "$INFRA_HOST" "$NGINX_PORT" nginx "$logfile" "$READY_TIMEOUT"
}

start_chromedriver() {
  install_chromedriver
  ensure_curl
  local logfile
  logfile="$(logfile_of chromedriver)"
  daemon_running chromedriver || check_port_free chromedriver "$CHROMEDRIVER_PORT"
  # ChromeDriver listens on every interface (there is no flag to pick one); --allowed-ips
  # makes it refuse any client but loopback.  Each test session starts its own Chromium.
  start_daemon chromedriver "$logfile" chromedriver \
    "--port=$CHROMEDRIVER_PORT" \
    "--allowed-ips=$INFRA_HOST" \
    --log-level=INFO
  wait_for_port "$INFRA_HOST" "$CHROMEDRIVER_PORT" chromedriver "$logfile" "$READY_TIMEOUT"
  wait_until chromedriver "$logfile" "$READY_TIMEOUT" "GET http://$INFRA_HOST:$CHROMEDRIVER_PORT/status = ready" ready_chromedriver
  check_browser_versions
}

# "Chromium 1.2.3.4 / ChromeDriver 1.2.3.4" (what is installed).
browser_versions() {
  local chromium driver
  chromium="$(chromium --version 2>/dev/null | awk '{ print $2 }')"
  driver="$(chromedriver --version 2>/dev/null | awk '{ print $2 }')"
  printf 'Chromium %s / ChromeDriver %s' "${chromium:-?}" "${driver:-?}"
}

# ChromeDriver only drives the Chromium of the same major version: warn when they differ
# (e.g. one of the two Debian packages was upgraded without the other).
check_browser_versions() {
  local chromium driver
  chromium="$(chromium --version 2>/dev/null | awk '{ print $2 }')"
  driver="$(chromedriver --version 2>/dev/null | awk '{ print $2 }')"
  if [[ "${chromium%%.*}" != "${driver%%.*}" ]]; then
    warn "Chromium ${chromium:-?} and ChromeDriver ${driver:-?} differ in major version: sessions will fail (apt-get install chromium chromium-driver)"
  fi
}

# ============================================================ commands
valid_component() {
  local c
  for c in "${ALL_COMPONENTS[@]}"; do [[ "$c" == "$1" ]] && return 0; done
  die "unknown component '$1' (known: ${ALL_COMPONENTS[*]})"
}

write_env_file() {
  local tmp="$DATA_DIR/infra.env.tmp"
  print_env >"$tmp"
  mv -f "$tmp" "$DATA_DIR/infra.env"
}

print_env() {
  echo "export MONGO_URL=mongodb://$INFRA_HOST:$FERRETDB_PORT"
  echo "export NATS_URL=nats://$INFRA_HOST:$NATS_PORT"
  echo "export REDIS_URL=redis://$INFRA_HOST:$REDIS_PORT"
  echo "export FERRETDB_METRICS_URL=http://$INFRA_HOST:$FERRETDB_METRICS_PORT/debug/metrics"
  if daemon_running stripe-mock; then
    echo "export STRIPE_API_BASE=http://$INFRA_HOST:$STRIPE_MOCK_PORT"
  fi
  if daemon_running chromedriver; then
    echo "export WEBDRIVER_URL=http://$INFRA_HOST:$CHROMEDRIVER_PORT"
  fi
}

cmd_up() {
  local c start=$SECONDS
  for c in "$@"; do
    log "starting $c"
    "start_${c//-/_}"
    log "$c ready: $(describe "$c")"
  done
  write_env_file
  log "infrastructure up in $((SECONDS - start))s ($*); env in ${DATA_DIR#"$ROOT"/}/infra.env"
}

stop_component() {
  if [[ "$1" == postgresql ]]; then stop_postgresql; else stop_daemon "$1"; fi
}

cmd_down() {
  local c
  for c in "$@"; do stop_component "$c"; done
  write_env_file
}

cmd_restart() {
  local c
  for c in "$@"; do
    stop_component "$c"
    log "starting $c"
    "start_${c//-/_}"
    log "$c ready: $(describe "$c")"
  done
  write_env_file
}

cmd_kill() {
  local c
  for c in "$@"; do kill_daemon "$c"; done
  write_env_file
}

# status [COMPONENT...]: one line per component; exit 1 if a checked one is down.
cmd_status() {
  local explicit=$# c pid state rc=0
  local -a show=("$@") check=("$@")
  if ((explicit == 0)); then
    show=("${ALL_COMPONENTS[@]}")
    check=("${DEFAULT_COMPONENTS[@]}")
  fi
  for c in "${show[@]}"; do
    # PostgreSQL only matters (and is only listed) when it runs or FerretDB is to use it.
    if [[ "$c" == postgresql ]] && ((explicit == 0)) && [[ "$(db_backend)" != postgresql ]] &&
      ! daemon_running postgresql; then
      continue
    fi
    if [[ "$c" == postgresql && " ${check[*]} " == *" ferretdb "* && "$(db_backend)" == postgresql ]]; then
      check+=(postgresql)
    fi
    if pid="$(daemon_pid "$c")"; then
      if "ready_${c//-/_}" >/dev/null 2>&1; then state="up"; else state="up (not ready)"; fi
      printf '%-12s %-15s pid %-8s %s\n' "$c" "$state" "$pid" "$(describe "$c")"
    else
      state="down"
      if port_open "$INFRA_HOST" "$(port_of "$c")"; then state="down (port taken by another process)"; fi
      printf '%-12s %s\n' "$c" "$state"
    fi
    if [[ "$state" != "up" && " ${check[*]} " == *" $c "* ]]; then rc=1; fi
  done
  return "$rc"
}

main() {
  local cmd="${1:-up}"
  shift || true
  local c
  for c in "$@"; do valid_component "$c"; done
  case "$cmd" in
    up | start)
      (($# > 0)) || set -- "${DEFAULT_COMPONENTS[@]}"
      with_lock infra
      cmd_up "$@"
      ;;
    down | stop)
      (($# > 0)) || set -- "${ALL_COMPONENTS[@]}"
      with_lock infra
      cmd_down "$@"
      ;;
    restart)
      (($# > 0)) || set -- "${DEFAULT_COMPONENTS[@]}"
      with_lock infra
      cmd_restart "$@"
      ;;
    kill)
      (($# > 0)) || die "kill needs component names (${ALL_COMPONENTS[*]})"
      with_lock infra
      cmd_kill "$@"
      ;;
    status) cmd_status "$@" ;;
    env) print_env ;;
    pid)
      (($# == 1)) || die "pid needs exactly one component"
      daemon_pid "$1" || die "$1 is not running"
      ;;
    -h | --help | help) usage ;;
    *)
      echo "unknown command '$cmd'" >&2
      usage
      ;;
  esac
}

main "$@"
