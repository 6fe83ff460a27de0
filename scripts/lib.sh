# shellcheck shell=bash
# Shared helpers for scripts/infra.sh, scripts/app.sh and scripts/test.sh.
# Source it; do not execute it.  Everything lives under $DATA_DIR (= <repo>/.data,
# ignored by git): binaries in bin/, pid files in run/, logs in logs/.

# ---------------------------------------------------------------- locations
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
# INFRA_INSTANCE=NAME runs a separate set of infrastructure (own data, pids, logs, and ports shifted
# by INFRA_PORT_OFFSET), e.g. for the fault suite, which restarts NATS and FerretDB under its own
# feet and must not disturb anything else. Installed binaries are shared. The fault suite's
# instance (faults) is at +100 and the browser tests' (e2e) at +200 unless told otherwise; any
# other instance must say its offset, so that two instances never share ports by default.
INFRA_INSTANCE="${INFRA_INSTANCE:-}"
if [[ -n "$INFRA_INSTANCE" ]]; then
  [[ "$INFRA_INSTANCE" =~ ^[a-z0-9-]+$ ]] || { echo "INFRA_INSTANCE must be lowercase letters, digits, dashes" >&2; exit 2; }
  DATA_DIR="$ROOT/.data/instances/$INFRA_INSTANCE"
  case "$INFRA_INSTANCE" in
    faults) PORT_OFFSET="${INFRA_PORT_OFFSET:-100}" ;;
    e2e) PORT_OFFSET="${INFRA_PORT_OFFSET:-200}" ;;
    *)
      [[ "${INFRA_PORT_OFFSET:-}" =~ ^[0-9]+$ && "${INFRA_PORT_OFFSET}" -ge 300 ]] || {
        echo "INFRA_INSTANCE=$INFRA_INSTANCE needs INFRA_PORT_OFFSET (300 or more; +100 is the fault suite's, +200 the browser tests')" >&2
        exit 2
      }
      PORT_OFFSET="$INFRA_PORT_OFFSET"
      ;;
  esac
else
  DATA_DIR="$ROOT/.data"
  PORT_OFFSET=0
fi
BIN_DIR="$ROOT/.data/bin"
RUN_DIR="$DATA_DIR/run"
LOG_DIR="$DATA_DIR/logs"
export ROOT DATA_DIR BIN_DIR RUN_DIR LOG_DIR

# Tools installed by the scripts come first; Debian puts daemons in /usr/sbin, Go in /usr/local/go/bin.
PATH="$BIN_DIR:$PATH:/usr/local/go/bin:/usr/local/sbin:/usr/sbin:/sbin"
export PATH

mkdir -p "$BIN_DIR" "$RUN_DIR" "$LOG_DIR"

# Loopback ports of the local infrastructure (see scripts/infra.sh). All below 32768, outside Linux's
# ephemeral range, so an outgoing connection can never hold one when a server (re)starts.
INFRA_HOST=127.0.0.1
FERRETDB_PORT=$((27117 + PORT_OFFSET))
FERRETDB_METRICS_PORT=$((27118 + PORT_OFFSET))
NATS_PORT=$((24222 + PORT_OFFSET))
NATS_MONITOR_PORT=$((28222 + PORT_OFFSET))
REDIS_PORT=$((26379 + PORT_OFFSET))
STRIPE_MOCK_PORT=$((12111 + PORT_OFFSET))
STRIPE_MOCK_HTTPS_PORT=$((12112 + PORT_OFFSET))
NGINX_PORT=$((8080 + PORT_OFFSET))
CHROMEDRIVER_PORT=$((29515 + PORT_OFFSET))
POSTGRES_PORT=$((25432 + PORT_OFFSET))
export INFRA_INSTANCE INFRA_HOST FERRETDB_PORT FERRETDB_METRICS_PORT NATS_PORT NATS_MONITOR_PORT REDIS_PORT STRIPE_MOCK_PORT STRIPE_MOCK_HTTPS_PORT NGINX_PORT CHROMEDRIVER_PORT POSTGRES_PORT

# How many lines of a log to show when something fails.
LOG_TAIL_LINES="${LOG_TAIL_LINES:-30}"

# ---------------------------------------------------------------- messages
# Progress messages go to stderr so that stdout stays clean for `infra.sh env`.
log() { printf '==> %s\n' "$*" >&2; }
warn() { printf 'WARNING: %s\n' "$*" >&2; }
die() {
  printf 'ERROR: %s\n' "$*" >&2
  exit 1
}

# Print the last lines of a log file (if any) to stderr.
show_log_tail() {
  local logfile="$1" lines="${2:-$LOG_TAIL_LINES}"
  if [[ -s "$logfile" ]]; then
    printf -- '----- last %s lines of %s -----\n' "$lines" "$logfile" >&2
    tail -n "$lines" "$logfile" >&2
    printf -- '----- end of %s -----\n' "$logfile" >&2
  else
    printf -- '(log file %s is missing or empty)\n' "$logfile" >&2
  fi
}

# fail_with_log LOGFILE MESSAGE...: print the message and the log tail, exit 1.
fail_with_log() {
  local logfile="$1"
  shift
  printf 'ERROR: %s\n' "$*" >&2
  show_log_tail "$logfile"
  exit 1
}

# ---------------------------------------------------------------- locking
# with_lock NAME: serialise concurrent runs (e.g. two test runs calling infra.sh up).
# The lock is held on fd 9 until the calling script exits; start_daemon closes fd 9
# in the daemons so they never inherit it.
with_lock() {
  local lockfile="$RUN_DIR/$1.lock"
  exec 9>"$lockfile"
  if ! flock -n 9; then
    log "waiting for another run holding $lockfile"
    flock -w 900 9 || die "could not take lock $lockfile within 15 min"
  fi
}

# ---------------------------------------------------------------- installs
# as_root CMD...: run as root (directly, or via sudo when available).
as_root() {
  if [[ "$(id -u)" -eq 0 ]]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo "$@"
  else
    die "need root to run: $* (install it by hand or run as root)"
  fi
}

# ensure_apt_packages CMD PACKAGE [PACKAGE...]: install the Debian packages unless CMD exists.
# apt-get update is only run when the install fails without it.
ensure_apt_packages() {
  local cmd="$1"
  shift
  command -v "$cmd" >/dev/null 2>&1 && return 0
  local logfile="$LOG_DIR/install-apt.log" start=$SECONDS
  log "installing Debian package(s) $* (for '$cmd'; log ${logfile#"$ROOT"/})"
  command -v apt-get >/dev/null 2>&1 || die "'$cmd' is missing and apt-get is not available: install $* by hand"
  # Debian's maintainer scripts may try to start system services; that does not disturb
  # ours (different ports).
  if ! as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" >>"$logfile" 2>&1; then
    log "apt-get install failed; running apt-get update and retrying"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q >>"$logfile" 2>&1 ||
      fail_with_log "$logfile" "apt-get update failed"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" >>"$logfile" 2>&1 ||
      fail_with_log "$logfile" "apt-get install $* failed"
  fi
  command -v "$cmd" >/dev/null 2>&1 || fail_with_log "$logfile" "installed $* but '$cmd' is still not on PATH"
  log "installed $* in $((SECONDS - start))s"
}

# require_go: make sure a Go toolchain is available (it is not installed by these scripts).
require_go() {
  command -v go >/dev/null 2>&1 ||
    die "Go toolchain not found (looked in PATH and /usr/local/go/bin); it is needed once to build FerretDB/stripe-mock into $BIN_DIR"
}

# ---------------------------------------------------------------- daemons
pidfile_of() { printf '%s/%s.pid' "$RUN_DIR" "$1"; }

# proc_field PID N: field N (1-based, as in proc(5)) of /proc/PID/stat.
proc_field() {
  local stat rest
  stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
  rest="${stat##*) }"
  local -a fields
  read -r -a fields <<<"$rest"
  printf '%s\n' "${fields[$(($2 - 3))]}"
}

# pid_alive PID: the process exists and is not a zombie (an exited daemon stays a zombie until
# whoever inherited it reaps it).
pid_alive() {
  kill -0 "$1" 2>/dev/null && [[ "$(proc_field "$1" 3)" != "Z" ]]
}

# daemon_pid NAME: print the pid and succeed if the daemon started by start_daemon is alive.
# The pid file holds the pid and the process start time, so a pid file whose process is gone
# (or whose pid was reused by another program) is treated as stale.
daemon_pid() {
  local name="$1" pidfile pid want
  pidfile="$(pidfile_of "$name")"
  [[ -s "$pidfile" ]] || return 1
  pid="$(head -n 1 "$pidfile")"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  pid_alive "$pid" || return 1
  want="$(sed -n 2p "$pidfile")"
  if [[ -n "$want" ]]; then
    [[ "$(proc_field "$pid" 22)" == "$want" ]] || return 1
  fi
  printf '%s\n' "$pid"
}

daemon_running() { daemon_pid "$1" >/dev/null; }

# port_open HOST PORT: succeed if something accepts TCP connections there.
port_open() {
  # shellcheck disable=SC2016 # expanded by the inner shell
  timeout 2 bash -c 'exec 3<>"/dev/tcp/$1/$2"' _ "$1" "$2" 2>/dev/null
}

# port_owner PORT: best-effort description of who listens on PORT.
port_owner() {
  if command -v ss >/dev/null 2>&1; then
    ss -H -ltnp "sport = :$1" 2>/dev/null | head -n 3 || true
  fi
}

# rotate_log FILE: moves FILE to FILE.1 (replacing the one before) if it is larger than
# LOG_ROTATE_MIB (default 64); true if it did. The logs under .data/logs are appended to across
# restarts, and one benchmark run adds about 250 MB of request lines to tickets.log and 100 MB to
# nginx-access.log: without this, a day of runs filled gigabytes.
rotate_log() {
  local file="$1" limit_mib="${LOG_ROTATE_MIB:-64}" size
  [[ "$limit_mib" =~ ^[0-9]+$ ]] || die "LOG_ROTATE_MIB must be a whole number of MiB (got '$limit_mib')"
  [[ -f "$file" ]] || return 1
  size="$(stat -c %s "$file")"
  ((size > limit_mib * 1024 * 1024)) || return 1
  mv -f "$file" "$file.1"
}

# start_daemon NAME LOGFILE CMD...: run CMD in the background in its own session
# (setsid + nohup, stdin from /dev/null, stdout+stderr appended to LOGFILE), cwd $DATA_DIR.
# Its pid goes to .data/run/NAME.pid.  Does nothing if NAME is already running.
start_daemon() {
  local name="$1" logfile="$2"
  shift 2
  local pidfile pid i
  pidfile="$(pidfile_of "$name")"
  if pid="$(daemon_pid "$name")"; then
    log "$name already running (pid $pid)"
    return 0
  fi
  rm -f "$pidfile"
  mkdir -p "$(dirname "$logfile")"
  rotate_log "$logfile" || true
  printf '\n===== %s starting %s: %s\n' "$(date '+%Y-%m-%d %H:%M:%S')" "$name" "$*" >>"$logfile"
  # The inner shell writes its own pid and start time (setsid may fork) and then execs the
  # command, so the pid file holds the daemon's pid, which is also its process-group id.
  (
    cd "$DATA_DIR" || exit 1
    exec 9>&-
    # shellcheck disable=SC2016 # expanded by the inner shell
    exec setsid nohup bash -c '
      stat="$(</proc/$$/stat)"; read -r -a f <<<"${stat##*) }"
      printf "%s\n%s\n" "$$" "${f[19]}" >"$1.tmp" && mv -f "$1.tmp" "$1"
      shift; exec "$@"' _ "$pidfile" "$@" </dev/null >>"$logfile" 2>&1
  ) &
  for ((i = 0; i < 50; i++)); do
    [[ -s "$pidfile" ]] && break
    sleep 0.1
  done
  [[ -s "$pidfile" ]] || fail_with_log "$logfile" "$name did not start (no pid file $pidfile)"
  sleep 0.2
  pid="$(daemon_pid "$name")" || fail_with_log "$logfile" "$name exited right after start"
  log "started $name (pid $pid, log ${logfile#"$ROOT"/})"
}

# signal_target PID: what to signal for a daemon. start_daemon makes it a session (and
# process-group) leader: signal the group so that helper children go too; otherwise just the pid.
signal_target() {
  local pid="$1"
  if [[ "$(ps -o pgid= -p "$pid" 2>/dev/null | tr -d ' ')" == "$pid" ]]; then
    echo "-$pid"
  else
    echo "$pid"
  fi
}

# wait_gone PID TENTHS: waits up to TENTHS tenths of a second for PID to exit.
wait_gone() {
  local pid="$1" tenths="$2" i
  for ((i = 0; i < tenths; i++)); do
    pid_alive "$pid" || return 0
    sleep 0.1
  done
}

# stop_daemon NAME [TIMEOUT_SECONDS]: SIGTERM its process group, wait, then SIGKILL.
stop_daemon() {
  local name="$1" timeout="${2:-15}" pid target
  local pidfile
  pidfile="$(pidfile_of "$name")"
  if ! pid="$(daemon_pid "$name")"; then
    rm -f "$pidfile"
    log "$name is not running"
    return 0
  fi
  target="$(signal_target "$pid")"
  log "stopping $name (pid $pid)"
  kill -TERM -- "$target" 2>/dev/null || true
  wait_gone "$pid" $((timeout * 10))
  if pid_alive "$pid"; then
    warn "$name (pid $pid) ignored SIGTERM for ${timeout}s, sending SIGKILL"
    kill -KILL -- "$target" 2>/dev/null || true
    wait_gone "$pid" 50
  fi
  rm -f "$pidfile"
}

# kill_daemon NAME: SIGKILL it at once (crash simulation for fault-injection tests).
kill_daemon() {
  local name="$1" pid
  if ! pid="$(daemon_pid "$name")"; then
    log "$name is not running"
    return 0
  fi
  log "killing $name (pid $pid) with SIGKILL"
  kill -KILL -- "$(signal_target "$pid")" 2>/dev/null || true
  wait_gone "$pid" 50
  rm -f "$(pidfile_of "$name")"
}

# ---------------------------------------------------------------- usage
# usage: print the running script's header (the comment between its first line and `set -euo`)
# to stderr and exit 2.
usage() {
  sed -n '2,/^set -euo/p' "$ROOT/scripts/$(basename "${BASH_SOURCE[-1]}")" | sed -e '$d' -e 's/^# \{0,1\}//' >&2
  exit 2
}

# ---------------------------------------------------------------- readiness
# mongo_ping HOST PORT: send a MongoDB OP_MSG {ping: 1, $db: "admin"} and expect {ok: 1}.
mongo_ping() {
  # shellcheck disable=SC2016 # expanded by the inner shell
  timeout 3 bash -c '
    exec 3<>"/dev/tcp/$1/$2" || exit 1
    printf "\x33\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\xdd\x07\x00\x00\x00\x00\x00\x00\x00\x1e\x00\x00\x00\x10ping\x00\x01\x00\x00\x00\x02\$db\x00\x06\x00\x00\x00admin\x00\x00" >&3
    len=$(head -c 4 <&3 | od -An -tu4 | tr -d " \n")
    [[ $len =~ ^[0-9]+$ ]] && ((len > 21 && len < 1048576)) || exit 1
    body=$(head -c $((len - 4)) <&3 | od -An -tx1 | tr -d " \n")
    [[ $body == *016f6b00000000000000f03f* || $body == *106f6b0001000000* ]]
  ' _ "$1" "$2" 2>/dev/null
}

# poll_daemon NAME LOGFILE TIMEOUT PAUSE GONE LATE CMD...: run CMD every PAUSE seconds until it
# succeeds. Fails (with the log tail) saying GONE if the daemon NAME was started by us and died, or
# LATE once TIMEOUT seconds have passed.
poll_daemon() {
  local name="$1" logfile="$2" timeout="$3" pause="$4" gone="$5" late="$6"
  shift 6
  local deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    if [[ -e "$(pidfile_of "$name")" ]] && ! daemon_running "$name"; then
      fail_with_log "$logfile" "$gone"
    fi
    if ((SECONDS >= deadline)); then
      fail_with_log "$logfile" "$late"
    fi
    sleep "$pause"
  done
}

# wait_for_port HOST PORT NAME LOGFILE TIMEOUT: wait until HOST:PORT accepts TCP.
wait_for_port() {
  local host="$1" port="$2" name="$3" logfile="$4" timeout="${5:-60}"
  log "waiting for $name on $host:$port (up to ${timeout}s)"
  poll_daemon "$name" "$logfile" "$timeout" 0.2 \
    "$name exited while we waited for $host:$port" \
    "$name did not accept connections on $host:$port within ${timeout}s" \
    port_open "$host" "$port"
}

# wait_until NAME LOGFILE TIMEOUT WHAT CMD...: wait until CMD succeeds (readiness probe).
wait_until() {
  local name="$1" logfile="$2" timeout="$3" what="$4"
  shift 4
  log "waiting for $name: $what (up to ${timeout}s)"
  poll_daemon "$name" "$logfile" "$timeout" 0.3 \
    "$name exited while we waited for: $what" \
    "$name not ready within ${timeout}s: $what" \
    "$@"
}
