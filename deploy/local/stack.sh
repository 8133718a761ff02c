#!/usr/bin/env bash
# The local stack the fleet needs: NATS (JetStream), PostgreSQL and Redis.
#
#   deploy/local/stack.sh up      make sure all three answer at NATS_URL / DATABASE_URL / REDIS_URL
#   deploy/local/stack.sh down    stop the private servers this script started
#   deploy/local/stack.sh status  say what answers where
#   deploy/local/stack.sh deps    install missing server binaries (Debian packages; root only)
#   deploy/local/stack.sh test-tools  install chromium, chromedriver and promtool (for make test)
#   deploy/local/stack.sh test-pg-up    start a throwaway PostgreSQL for the tests; prints its URL
#   deploy/local/stack.sh test-pg-down  stop it and delete its data
#
# For each service: if a server answers at the configured URL it is used as it is. Otherwise a
# private one is started from the installed binaries, on loopback at the URL's port, with its data
# and logs under .dev/. If a binary is missing, the Debian package is installed when running as
# root; otherwise the exact command to run is printed. Nothing here touches a server it did not
# start.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
DEV="${FLEET_DEV_DIR:-$ROOT/.dev}"
NATS_URL="${NATS_URL:-nats://127.0.0.1:4222}"
DATABASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/fleet}"
REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379}"

say() { printf 'stack: %s\n' "$*" >&2; }
die() { printf 'stack: error: %s\n' "$*" >&2; exit 1; }

# host and port of the first URL in a (comma-separated) list; default port per scheme.
host_of() { local u="${1%%,*}"; u="${u#*://}"; u="${u##*@}"; u="${u%%/*}"; echo "${u%%:*}"; }
port_of() {
  local u="${1%%,*}" def="$2"; u="${u#*://}"; u="${u##*@}"; u="${u%%/*}"
  if [[ "$u" == *:* ]]; then echo "${u##*:}"; else echo "$def"; fi
}
is_local() { [[ "$1" == 127.* || "$1" == localhost || "$1" == "::1" ]]; }
answers() { timeout 1 bash -c "exec 3<>/dev/tcp/$1/$2" 2>/dev/null; }
wait_port() {
  local host="$1" port="$2" what="$3" log="$4"
  for _ in $(seq 1 150); do answers "$host" "$port" && return 0; sleep 0.1; done
  die "$what did not start on $host:$port; see $log"
}

find_bin() {
  local name="$1" d
  if command -v "$name" >/dev/null 2>&1; then command -v "$name"; return 0; fi
  for d in /usr/sbin /usr/local/bin /usr/local/sbin /usr/lib/postgresql/*/bin; do
    [[ -x "$d/$name" ]] && { echo "$d/$name"; return 0; }
  done
  return 1
}

# ensure_bin NAME PACKAGE: prints the binary's path, installing PACKAGE if root.
ensure_bin() {
  local name="$1" pkg="$2" path
  if path="$(find_bin "$name")"; then echo "$path"; return 0; fi
  if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
    say "$name is missing: installing Debian package $pkg"
    if [[ ! -e /var/lib/apt/lists/lock || -z "$(ls /var/lib/apt/lists 2>/dev/null | grep -v lock)" ]]; then
      DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
    fi
    # Several checkouts on one machine may install at once: apt takes one at a time.
    local lock=(); command -v flock >/dev/null 2>&1 && lock=(flock /tmp/apt.lock)
    DEBIAN_FRONTEND=noninteractive "${lock[@]}" apt-get install -y -qq "$pkg" >&2 || {
      DEBIAN_FRONTEND=noninteractive "${lock[@]}" apt-get update -qq >&2
      DEBIAN_FRONTEND=noninteractive "${lock[@]}" apt-get install -y -qq "$pkg" >&2
    }
    find_bin "$name" && return 0
  fi
  die "$name is not installed; run: sudo apt-get install -y $pkg"
}

start_nats() {
  local host port; host="$(host_of "$NATS_URL")"; port="$(port_of "$NATS_URL" 4222)"
  if answers "$host" "$port"; then say "NATS answers at $host:$port (using it)"; return; fi
  is_local "$host" || die "NATS_URL points at $host:$port, which does not answer"
  local bin; bin="$(ensure_bin nats-server nats-server)"
  mkdir -p "$DEV/nats"
  say "starting a private nats-server (JetStream) on 127.0.0.1:$port, data in $DEV/nats"
  nohup "$bin" -a 127.0.0.1 -p "$port" -js -sd "$DEV/nats" -l "$DEV/nats.log" >/dev/null 2>&1 &
  echo $! > "$DEV/nats.pid"
  wait_port 127.0.0.1 "$port" nats-server "$DEV/nats.log"
}

start_redis() {
  local host port; host="$(host_of "$REDIS_URL")"; port="$(port_of "$REDIS_URL" 6379)"
  if answers "$host" "$port"; then say "Redis answers at $host:$port (using it)"; return; fi
  is_local "$host" || die "REDIS_URL points at $host:$port, which does not answer"
  local bin; bin="$(ensure_bin redis-server redis-server)"
  mkdir -p "$DEV/redis"
  say "starting a private redis-server on 127.0.0.1:$port"
  "$bin" --daemonize yes --bind 127.0.0.1 --port "$port" --save "" --appendonly no \
    --dir "$DEV/redis" --logfile "$DEV/redis.log" --pidfile "$DEV/redis.pid"
  wait_port 127.0.0.1 "$port" redis-server "$DEV/redis.log"
}

start_postgres() {
  local host port; host="$(host_of "$DATABASE_URL")"; port="$(port_of "$DATABASE_URL" 5432)"
  if answers "$host" "$port"; then say "PostgreSQL answers at $host:$port (using it)"; return; fi
  is_local "$host" || die "DATABASE_URL points at $host:$port, which does not answer"
  local initdb pg_ctl; initdb="$(ensure_bin initdb postgresql)"; pg_ctl="$(ensure_bin pg_ctl postgresql)"
  local data="$DEV/pg" run=()
  mkdir -p "$DEV"
  # PostgreSQL refuses to run as root: run it as the postgres system user then.
  if [[ "$(id -u)" == 0 ]]; then
    id postgres >/dev/null 2>&1 || useradd --system --home-dir /var/lib/postgresql postgres
    run=(runuser -u postgres --)
    mkdir -p "$data"; chown postgres "$data"; chmod 700 "$data"
    chmod o+x "$DEV"
  fi
  if [[ ! -f "$data/PG_VERSION" ]]; then
    say "initializing a private PostgreSQL cluster in $data (trust auth, user postgres)"
    "${run[@]}" "$initdb" -D "$data" -U postgres -A trust >"$DEV/initdb.log" 2>&1 \
      || die "initdb failed; see $DEV/initdb.log"
  fi
  say "starting a private PostgreSQL on 127.0.0.1:$port"
  touch "$DEV/pg.log"; [[ "$(id -u)" == 0 ]] && chown postgres "$DEV/pg.log"
  "${run[@]}" "$pg_ctl" -D "$data" -l "$DEV/pg.log" -w -o "-p $port -c listen_addresses=127.0.0.1 -k /tmp" start >/dev/null \
    || die "PostgreSQL did not start; see $DEV/pg.log"
  wait_port 127.0.0.1 "$port" postgres "$DEV/pg.log"
}

stop_private() {
  if [[ -f "$DEV/nats.pid" ]]; then kill "$(cat "$DEV/nats.pid")" 2>/dev/null || true; rm -f "$DEV/nats.pid"; say "stopped private nats-server"; fi
  if [[ -f "$DEV/redis.pid" ]]; then kill "$(cat "$DEV/redis.pid")" 2>/dev/null || true; rm -f "$DEV/redis.pid"; say "stopped private redis-server"; fi
  if [[ -f "$DEV/pg/postmaster.pid" ]]; then
    local run=(); [[ "$(id -u)" == 0 ]] && run=(runuser -u postgres --)
    "${run[@]}" "$(find_bin pg_ctl)" -D "$DEV/pg" -m fast stop >/dev/null 2>&1 || true
    say "stopped private PostgreSQL"
  fi
}

status() {
  local h p
  h="$(host_of "$NATS_URL")"; p="$(port_of "$NATS_URL" 4222)"
  answers "$h" "$p" && say "NATS       $h:$p up" || say "NATS       $h:$p down"
  h="$(host_of "$DATABASE_URL")"; p="$(port_of "$DATABASE_URL" 5432)"
  answers "$h" "$p" && say "PostgreSQL $h:$p up" || say "PostgreSQL $h:$p down"
  h="$(host_of "$REDIS_URL")"; p="$(port_of "$REDIS_URL" 6379)"
  answers "$h" "$p" && say "Redis      $h:$p up" || say "Redis      $h:$p down"
}

# The tests' own PostgreSQL: every test creates a database and drops it at its end, and
# PostgreSQL forces a checkpoint on every DROP DATABASE. On the machine's server that is a
# checkpoint with fsyncs about twice a second for the whole run, paid by every test running
# beside it. This one keeps its data in memory (tmpfs) and does not fsync, so a database's
# create and drop cost a tenth as much; it starts empty and is deleted after the run. Nothing
# the tests check depends on surviving a machine crash. Only the tests use it: `make run` and
# the fleet keep using DATABASE_URL.
test_pg_dir() {
  local base=/dev/shm id
  [[ -d "$base" && -w "$base" ]] || base="$DEV"
  id="$(printf '%s' "$ROOT" | cksum | cut -d' ' -f1)"
  echo "${FLEET_TEST_PG_DIR:-$base/fleet-test-pg.$(id -u).$id}"
}

test_pg_down() {
  local dir run=(); dir="$(test_pg_dir)"
  [[ "$(id -u)" == 0 ]] && run=(runuser -u postgres --)
  if [[ -f "$dir/data/postmaster.pid" ]]; then
    "${run[@]}" "$(find_bin pg_ctl)" -D "$dir/data" -m immediate stop >/dev/null 2>&1 || true
  fi
  rm -rf "$dir"
}

test_pg_up() {
  local initdb pg_ctl dir run=() port
  initdb="$(ensure_bin initdb postgresql)"; pg_ctl="$(ensure_bin pg_ctl postgresql)"
  dir="$(test_pg_dir)"
  test_pg_down # what a killed run left behind
  mkdir -p "$dir"
  if [[ "$(id -u)" == 0 ]]; then
    id postgres >/dev/null 2>&1 || useradd --system --home-dir /var/lib/postgresql postgres
    run=(runuser -u postgres --)
    chown postgres "$dir"
  fi
  "${run[@]}" "$initdb" -D "$dir/data" -U postgres -A trust -N >"$dir/initdb.log" 2>&1 \
    || die "initdb failed for the tests' PostgreSQL; see $dir/initdb.log"
  # The first free port from 55432 up; another checkout may take it first, so try the next.
  for port in $(seq "${FLEET_TEST_PG_PORT:-55432}" 1 "$(( ${FLEET_TEST_PG_PORT:-55432} + 50 ))"); do
    answers 127.0.0.1 "$port" && continue
    if "${run[@]}" "$pg_ctl" -D "$dir/data" -l "$dir/pg.log" -w -o "-p $port \
        -c listen_addresses=127.0.0.1 -c unix_socket_directories=$dir \
        -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200" \
        start >/dev/null 2>&1; then
      say "the tests' PostgreSQL is up at 127.0.0.1:$port (data in $dir, deleted after the run)"
      echo "postgres://postgres@127.0.0.1:$port/postgres"
      return 0
    fi
  done
  die "the tests' PostgreSQL did not start; see $dir/pg.log"
}

# What the tests need beyond the servers: a browser and its WebDriver for the console's browser
# tests, promtool to check the alerting rules in deploy/observability.
test_tools() {
  ensure_bin chromium chromium >/dev/null
  ensure_bin chromedriver chromium-driver >/dev/null
  ensure_bin promtool prometheus >/dev/null
  say "test tools present (chromium, chromedriver, promtool)"
}

case "${1:-up}" in
  up) start_nats; start_postgres; start_redis ;;
  down) stop_private ;;
  status) status ;;
  test-tools) test_tools ;;
  test-pg-up) test_pg_up ;;
  test-pg-down) test_pg_down ;;
  deps)
    ensure_bin nats-server nats-server >/dev/null
    ensure_bin redis-server redis-server >/dev/null
    ensure_bin redis-cli redis-tools >/dev/null
    ensure_bin initdb postgresql >/dev/null
    say "server binaries present" ;;
  *) die "usage: $0 up|down|status|deps|test-tools|test-pg-up|test-pg-down" ;;
esac
