#!/usr/bin/env bash
# The browser end-to-end tests: the whole local app, driven by Chromium through ChromeDriver.
#
#   scripts/e2e.sh [CARGO TEST ARGS...] [-- TEST ARGS...]     e.g. scripts/e2e.sh -- --nocapture
#
# 1. the instance's stored data emptied (FerretDB, NATS, Redis: every run starts from nothing, so a
#    ticket a test puts up for sale is on the landing page's first page however many runs came
#    before); scripts/infra.sh up ferretdb nats redis chromedriver, and the Stripe double
#    (built with the test: `cargo test --workspace --test browser --no-run`, which resolves
#    features as scripts/test.sh's `cargo test --workspace` did and so reuses its build; on
#    127.0.0.1:12199 + the port offset, log
#    .data/logs/stripe-double.log): Stripe's charges, PaymentIntents and refunds with a ledger, and
#    the stub of Stripe.js (`e2e/static/stripe-stub.js`) the order page loads, so the page's
#    checkout (card field, PaymentIntent, 3-D Secure) runs end to end without a Stripe account;
# 2. scripts/app.sh up with APP_PROFILE=${APP_PROFILE:-debug} and
#    EXPIRATION_WINDOW_SECONDS=${E2E_EXPIRATION_WINDOW_SECONDS:-20}; app.sh restarts services that
#    already run with another binary or other settings.  Payments always uses the Stripe double
#    and the client the stub of Stripe.js with a test publishable key (the caller's STRIPE_KEY,
#    STRIPE_API_BASE, STRIPE_PUBLISHABLE_KEY and STRIPE_JS_URL are ignored);
# 3. cargo test --workspace --test browser [--locked] ARGS -- --test-threads=1 TEST ARGS, with exported
#      APP_URL=http://localhost:8280         the app, through nginx (INFRA_INSTANCE=e2e: ports +200)
#      WEBDRIVER_URL=http://127.0.0.1:29715  ChromeDriver (as root, Chromium needs --no-sandbox)
#      E2E_ARTIFACTS=<repo>/e2e-artifacts    emptied first; screenshots, page sources (ignored by git)
#      EXPIRATION_WINDOW_SECONDS             the window the orders service runs with
#      MONGO_URL, NATS_URL, REDIS_URL        the infrastructure, for checks behind the app
#      AXE_CORE_JS=<repo>/.data/npm/axe-core-<version>/axe.min.js   axe-core, which the
#                                            accessibility test injects into every page; fetched
#                                            once with `npm pack` at a pinned version and checked
#                                            against the registry's pinned sha512 integrity
# 4. on failure: the last lines of every service's log, of nginx's logs and of chromedriver's;
# 5. always: scripts/app.sh down, the Stripe double stopped, and scripts/infra.sh down of the e2e
#    instance.
# Environment: APP_SKIP_BUILD=1 (scripts/test.sh: reuse the debug binaries cargo test built; a
# missing one is built), AUTH_RATE_LIMIT_PER_MINUTE (passed to auth when set), LOG_TAIL_LINES.
set -euo pipefail
# A private instance of everything (own data, ports +200), so a developer's running app and the
# fault suite (+100) are left alone.
export INFRA_INSTANCE="${INFRA_INSTANCE:-e2e}"
export INFRA_PORT_OFFSET="${INFRA_PORT_OFFSET:-200}"

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"

SERVICES=(client auth tickets orders payments expiration) # as in scripts/app.sh
ARTIFACTS="$ROOT/e2e-artifacts"

# axe-core (https://github.com/dequelabs/axe-core), pinned: its version and the sha512 integrity
# the npm registry publishes for that version's tarball (`npm view axe-core@VERSION dist.integrity`).
AXE_CORE_VERSION=4.14.1
AXE_CORE_INTEGRITY="sha512-FHfa+lmNjQZfJz1q8wKqIDwC6DExcHt/pkjNQb09a3NPjCKg2rhu5qb2S4r76ASyFNNtuFooJpZe37OgudVGtQ=="
AXE_CORE_DIR="$ROOT/.data/npm/axe-core-$AXE_CORE_VERSION"

# Puts axe.min.js of the pinned axe-core in $AXE_CORE_DIR once (npm pack: no install scripts run,
# no node_modules, no lock file), refusing a tarball whose digest is not the pinned one.
install_axe_core() {
  [[ -s "$AXE_CORE_DIR/axe.min.js" ]] && return 0
  ensure_apt_packages npm npm
  ensure_apt_packages openssl openssl
  local tmp digest
  tmp="$(mktemp -d)"
  log "fetching axe-core $AXE_CORE_VERSION from the npm registry into ${AXE_CORE_DIR#"$ROOT"/}"
  (cd "$tmp" && npm pack --silent --ignore-scripts "axe-core@$AXE_CORE_VERSION" >/dev/null) ||
    { rm -rf "$tmp"; die "npm pack axe-core@$AXE_CORE_VERSION failed"; }
  digest="sha512-$(openssl dgst -sha512 -binary "$tmp/axe-core-$AXE_CORE_VERSION.tgz" | base64 -w0)"
  if [[ "$digest" != "$AXE_CORE_INTEGRITY" ]]; then
    rm -rf "$tmp"
    die "axe-core-$AXE_CORE_VERSION.tgz has integrity $digest, not the pinned $AXE_CORE_INTEGRITY"
  fi
  tar -xzf "$tmp/axe-core-$AXE_CORE_VERSION.tgz" -C "$tmp" package/axe.min.js package/LICENSE
  mkdir -p "$AXE_CORE_DIR"
  cp "$tmp/package/LICENSE" "$AXE_CORE_DIR/LICENSE"
  cp "$tmp/package/axe.min.js" "$AXE_CORE_DIR/axe.min.js.part"
  mv "$AXE_CORE_DIR/axe.min.js.part" "$AXE_CORE_DIR/axe.min.js"
  rm -rf "$tmp"
}

# ------------------------------------------------------------------ preconditions
[[ -f e2e/Cargo.toml ]] ||
  die "no end-to-end tests yet: e2e/Cargo.toml is missing (scripts/e2e.sh runs its \`browser\` test; create the e2e crate and add \"e2e\" to the workspace members)"
sed -n '/^[[:space:]]*members[[:space:]]*=/,/\]/p' Cargo.toml | grep -q '"e2e"' ||
  die "e2e/Cargo.toml exists but \"e2e\" is not in the workspace members of Cargo.toml (cargo test --workspace would not find it)"

# The whole workspace selected, as in scripts/test.sh, so features resolve the same and its build is
# reused; `--test browser` picks e2e's test alone (it is `test = false`: never run by default).
cargo_args=(test --workspace --test browser)
[[ -f Cargo.lock ]] && cargo_args+=(--locked)
test_args=(--test-threads=1)
seen_dashes=no
for arg in "$@"; do
  if [[ "$seen_dashes" == no && "$arg" == "--" ]]; then
    seen_dashes=yes
  elif [[ "$seen_dashes" == no ]]; then
    cargo_args+=("$arg")
  else
    test_args+=("$arg")
  fi
done

with_lock e2e

export APP_PROFILE="${APP_PROFILE:-debug}"
export EXPIRATION_WINDOW_SECONDS="${E2E_EXPIRATION_WINDOW_SECONDS:-20}"
unset STRIPE_KEY STRIPE_API_BASE STRIPE_PUBLISHABLE_KEY STRIPE_JS_URL
STRIPE_DOUBLE_PORT=$((12199 + INFRA_PORT_OFFSET))

started=$SECONDS
t=$SECONDS # start of the current phase
phase="infrastructure"
summary=()
app_started=no

print_logs() {
  local s
  for s in "${SERVICES[@]}"; do
    [[ -f "$ROOT/$s/Cargo.toml" ]] && show_log_tail "$LOG_DIR/$s.log"
  done
  show_log_tail "$LOG_DIR/nginx.log"
  show_log_tail "$LOG_DIR/nginx-access.log"
  show_log_tail "$LOG_DIR/chromedriver.log"
  show_log_tail "$LOG_DIR/stripe-double.log"
}

on_exit() {
  local rc=$?
  trap - EXIT INT TERM
  if ((rc != 0)); then
    printf 'ERROR: end-to-end run failed in: %s (exit %s); the logs:\n' "$phase" "$rc" >&2
    print_logs
  fi
  if [[ "$app_started" == yes ]]; then
    log "stopping the app: scripts/app.sh down (its EXPIRATION_WINDOW_SECONDS=$EXPIRATION_WINDOW_SECONDS must not outlive the run)"
    bash "$ROOT/scripts/app.sh" down || warn "scripts/app.sh down failed"
  fi
  stop_daemon stripe-double || warn "stopping the Stripe double failed"
  log "stopping the e2e infrastructure instance"
  bash "$ROOT/scripts/infra.sh" down >/dev/null 2>&1 || warn "scripts/infra.sh down failed"
  local result=PASS
  if ((rc != 0)); then
    result=FAIL
    summary+=("$phase: FAIL after $((SECONDS - t))s")
  fi
  echo "E2E: $result | ${summary[*]/%/ |} total $((SECONDS - started))s | artifacts ${ARTIFACTS#"$ROOT"/}/"
  exit "$rc"
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ------------------------------------------------------------------ 1. infrastructure
# Only ever a private instance's data (never the local app's .data/ferretdb and the like).
[[ -n "$INFRA_INSTANCE" ]] || die "scripts/e2e.sh runs on its own infrastructure instance; INFRA_INSTANCE is empty"
# A run cut short may have left its app running: its services ensured their indexes at start.
bash "$ROOT/scripts/app.sh" down >/dev/null 2>&1 || warn "scripts/app.sh down failed"
bash "$ROOT/scripts/infra.sh" down >/dev/null 2>&1 || warn "scripts/infra.sh down failed"
log "emptying the $INFRA_INSTANCE instance's stored data: ${DATA_DIR#"$ROOT"/}/{ferretdb,postgresql,nats,redis}"
rm -rf "$DATA_DIR/ferretdb" "$DATA_DIR/postgresql" "$DATA_DIR/nats" "$DATA_DIR/redis"
bash "$ROOT/scripts/infra.sh" up ferretdb nats redis chromedriver
install_axe_core
# Builds the test and e2e's binaries (the Stripe double among them) before the app starts.
cargo "${cargo_args[@]}" --no-run
start_daemon stripe-double "$LOG_DIR/stripe-double.log" \
  env STRIPE_DOUBLE_ADDR="127.0.0.1:$STRIPE_DOUBLE_PORT" "${CARGO_TARGET_DIR:-$ROOT/target}/debug/stripe-double"
wait_for_port 127.0.0.1 "$STRIPE_DOUBLE_PORT" stripe-double "$LOG_DIR/stripe-double.log" 30
export STRIPE_KEY=sk_test_123 STRIPE_API_BASE="http://127.0.0.1:$STRIPE_DOUBLE_PORT"
export STRIPE_PUBLISHABLE_KEY=pk_test_e2e_stub STRIPE_JS_URL="http://127.0.0.1:$STRIPE_DOUBLE_PORT/stripe-stub.js"
export AXE_CORE_JS="$AXE_CORE_DIR/axe.min.js"
eval "$(bash "$ROOT/scripts/infra.sh" env)"
[[ -n "${WEBDRIVER_URL:-}" ]] || die "chromedriver is not running after scripts/infra.sh up (no WEBDRIVER_URL)"
export MONGO_URL NATS_URL REDIS_URL WEBDRIVER_URL
summary+=("infra $((SECONDS - t))s")

# ------------------------------------------------------------------ 2. the app
phase="scripts/app.sh up"
t=$SECONDS
app_started=yes
log "starting the app: APP_PROFILE=$APP_PROFILE EXPIRATION_WINDOW_SECONDS=$EXPIRATION_WINDOW_SECONDS${APP_SKIP_BUILD:+ APP_SKIP_BUILD=$APP_SKIP_BUILD} scripts/app.sh up"
bash "$ROOT/scripts/app.sh" up
summary+=("app up $((SECONDS - t))s")

# ------------------------------------------------------------------ 3. the tests
phase="cargo test --test browser"
t=$SECONDS
export APP_URL="http://localhost:$NGINX_PORT"
export E2E_ARTIFACTS="$ARTIFACTS"
mkdir -p "$ARTIFACTS"
find "$ARTIFACTS" -mindepth 1 -delete
unset RUST_LOG
export RUST_BACKTRACE=1
log "running: cargo ${cargo_args[*]} -- ${test_args[*]} (APP_URL=$APP_URL WEBDRIVER_URL=$WEBDRIVER_URL E2E_ARTIFACTS=${ARTIFACTS#"$ROOT"/})"
cargo_rc=0
cargo "${cargo_args[@]}" -- "${test_args[@]}" || cargo_rc=$?
((cargo_rc == 0)) || exit "$cargo_rc"
summary+=("cargo test --test browser $((SECONDS - t))s")
