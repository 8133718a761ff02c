#!/usr/bin/env bash
# Runs the compose stack for real and checks what it does: builds the fleet image, brings
# deploy/compose.yaml up with three provisioners, provisions tenants, invalidates a tenant's
# cache, runs a backfill through the containers, checks every effect, and tears everything down.
# Exits non-zero on the first failure, naming it.
#
# Engine: podman, with podman-compose from PyPI. Images: FLEET_DEPLOY_IMAGES=official uses the
# official nats/postgres/redis images and builds deploy/Dockerfile (needs a registry);
# FLEET_DEPLOY_IMAGES=debian (the default, for machines that reach no registry) builds the stack
# from Debian packages: a `debootstrap --variant=minbase bookworm`
# root imported as an image, and the host's release binaries on top (deploy/compose.debian.yaml).
# As root it installs what is missing (podman, runc, iptables for netavark's bridge, debootstrap,
# netavark, aardvark-dns).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
DEV=$ROOT/.dev
PROJECT=fleet-deploy-test
IMAGES=${FLEET_DEPLOY_IMAGES:-debian}
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
TENANTS=${FLEET_DEPLOY_TENANTS:-12}
started=$(date +%s)

say() { printf 'deploy-test [%3ss] %s\n' "$(( $(date +%s) - started ))" "$*" >&2; }
fail() { say "FAILED: $*"; exit 1; }

# --- tools -------------------------------------------------------------------------------------
need_pkgs=()
for tool in podman:podman runc:runc iptables:iptables debootstrap:debootstrap psql:postgresql-client redis-cli:redis-tools; do
  command -v "${tool%%:*}" >/dev/null || need_pkgs+=("${tool#*:}")
done
[[ -x /usr/lib/podman/netavark || -x /usr/libexec/podman/netavark ]] || need_pkgs+=(netavark)
[[ -x /usr/lib/podman/aardvark-dns || -x /usr/libexec/podman/aardvark-dns ]] || need_pkgs+=(aardvark-dns)
if ((${#need_pkgs[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    fail "missing: ${need_pkgs[*]} (run: sudo apt-get install -y ${need_pkgs[*]})"
  fi
  say "installing ${need_pkgs[*]}"
  { flock 9; apt-get install -y --no-install-recommends "${need_pkgs[@]}" >/dev/null; } 9>/tmp/apt.lock
fi
VENV=$DEV/venv-deploy
if [[ ! -x $VENV/bin/podman-compose ]]; then
  say "installing podman-compose from PyPI into $VENV (Debian's 1.0.3 exits 0 when a service fails)"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet 'podman-compose>=1.2'
fi
COMPOSE=("$VENV/bin/podman-compose" -p "$PROJECT")

# crun fails on this kind of machine (setrlimit, hybrid cgroups): runc, and ulimits the
# machine's hard limit allows.
mkdir -p "$DEV"
nofile=$(ulimit -Hn)
cat > "$DEV/containers.conf" <<CONF
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=32768:32768"]
[engine]
runtime = "runc"
CONF
export CONTAINERS_CONF=$DEV/containers.conf

# --- images ------------------------------------------------------------------------------------
files=(-f deploy/compose.yaml)
say "building the release binaries"
cargo build --release --locked --quiet -p provisioner -p cache-invalidator -p backfill-worker -p scheduler -p fleetctl
FLEETCTL=$TARGET/release/fleetctl
if [[ $IMAGES == debian ]]; then
  files+=(-f deploy/compose.debian.yaml)
  if ! podman image exists localhost/fleet-debian:bookworm; then
    rootfs=$DEV/rootfs-bookworm
    if [[ ! -f $rootfs/.complete ]]; then
      say "debootstrap bookworm (minbase + nats-server, postgresql, redis-server) into $rootfs"
      rm -rf "$rootfs"
      debootstrap --variant=minbase \
        --include=ca-certificates,nats-server,postgresql,redis-server \
        bookworm "$rootfs" "${DEBIAN_MIRROR:-http://deb.debian.org/debian}" >"$DEV/debootstrap.log" 2>&1 \
        || fail "debootstrap (see $DEV/debootstrap.log)"
      chroot "$rootfs" apt-get clean
      touch "$rootfs/.complete"
    fi
    say "importing the Debian root as localhost/fleet-debian:bookworm"
    tar -C "$rootfs" --exclude=./.complete -c . | podman import - localhost/fleet-debian:bookworm >/dev/null
  fi
  ctx=$DEV/deploy-context
  rm -rf "$ctx" && mkdir -p "$ctx"
  cp deploy/test/Containerfile.fleet "$ctx/Containerfile"
  for b in provisioner cache-invalidator backfill-worker scheduler fleetctl; do
    # Debug line tables stay on the host; the image gets stripped binaries.
    strip -o "$ctx/$b" "$TARGET/release/$b" 2>/dev/null || cp "$TARGET/release/$b" "$ctx/"
  done
  say "building localhost/tenant-fleet:debian"
  podman build --quiet -t localhost/tenant-fleet:debian "$ctx" >/dev/null
  up_extra=()
else
  say "the fleet image is built from deploy/Dockerfile by compose up --build"
  up_extra=(--build)
fi

# --- up ----------------------------------------------------------------------------------------
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
export FLEET_NATS_PORT=$(free_port) FLEET_PG_PORT=$(free_port) FLEET_REDIS_PORT=$(free_port)
# Raw-SQL backfill jobs are off by default; this test's job is one.
cat > "$DEV/compose.test.yaml" <<YAML
services:
  backfill-worker:
    environment: { FLEET_BACKFILL_ALLOW_SQL: "1" }
YAML
files+=(-f "$DEV/compose.test.yaml")

down() {
  say "tearing the stack down"
  "${COMPOSE[@]}" "${files[@]}" down -v -t 40 >/dev/null 2>&1 || true
  # `down` only knows the scale written in the files: scaled-up replicas, and anything a failed
  # `up` left, go by the project's label.
  local ids
  ids=$(podman ps -aq --filter "label=io.podman.compose.project=$PROJECT")
  [[ -z $ids ]] || podman rm -f -t 40 $ids >/dev/null 2>&1 || true
  ids=$(podman volume ls -q --filter "label=io.podman.compose.project=$PROJECT")
  [[ -z $ids ]] || podman volume rm -f $ids >/dev/null 2>&1 || true
  podman network rm -f "${PROJECT}_default" >/dev/null 2>&1 || true
  left=$(podman ps -aq --filter "label=io.podman.compose.project=$PROJECT" | wc -l)
  (( left == 0 )) || say "warning: $left containers of $PROJECT are still there"
}
down  # what an earlier run left
trap down EXIT
say "compose up (provisioner=3; ports nats $FLEET_NATS_PORT, postgres $FLEET_PG_PORT, redis $FLEET_REDIS_PORT)"
"${COMPOSE[@]}" "${files[@]}" up -d "${up_extra[@]}" --scale provisioner=3 >"$DEV/compose-up.log" 2>&1 \
  || fail "compose up (see $DEV/compose-up.log)"

export NATS_URL=nats://127.0.0.1:$FLEET_NATS_PORT
export DATABASE_URL=postgres://postgres:fleet@127.0.0.1:$FLEET_PG_PORT/fleet
export REDIS_URL=redis://127.0.0.1:$FLEET_REDIS_PORT
export FLEET_BACKFILL_ALLOW_SQL=1
export PGPASSWORD=fleet
unset FLEET_CONFIG
psql_() { psql -qtAX -h 127.0.0.1 -p "$FLEET_PG_PORT" -U postgres -d fleet -v ON_ERROR_STOP=1 "$@"; }

wait_for() { # wait_for SECONDS WHAT COMMAND...
  local until=$(( $(date +%s) + $1 )) what=$2; shift 2
  until "$@" >/dev/null 2>&1; do
    (( $(date +%s) < until )) || fail "timed out waiting for $what"
    sleep 1
  done
}
wait_for 90 "postgres" psql_ -c 'SELECT 1'
wait_for 60 "nats" "$FLEETCTL" dlq list
running() { podman ps --filter "label=io.podman.compose.project=$PROJECT" --format '{{.Names}}' | grep -c -- "$1"; }
[[ $(running provisioner) -eq 3 ]] || fail "expected 3 provisioner containers, found $(running provisioner)"
for w in cache-invalidator backfill-worker scheduler; do
  [[ $(running "$w") -ge 1 ]] || fail "no $w container is running"
done

# --- provisioning ------------------------------------------------------------------------------
say "provisioning $TENANTS tenants through the containers"
for i in $(seq 1 "$TENANTS"); do
  id=$(python3 -c 'import uuid; print(uuid.uuid4())')
  "$FLEETCTL" publish tenant.created \
    "{\"tenant_id\":\"$id\",\"code\":\"t$i\",\"name\":\"Tenant $i\",\"plan\":\"premium\",\"org_code\":\"t${i}_org\"}" >/dev/null
done
all_active() { [[ $(psql_ -c "SELECT count(*) FROM fleet.tenants WHERE status = 'active'") -eq $TENANTS ]]; }
wait_for 180 "$TENANTS active tenants" all_active
schemas=$(psql_ -c "SELECT count(*) FROM information_schema.schemata WHERE schema_name ~ '^tenant_t[0-9]+$'")
[[ $schemas -eq $TENANTS ]] || fail "expected $TENANTS tenant schemas, found $schemas"
configs=$(psql_ -c "SELECT count(DISTINCT tenant_id) FROM fleet.tenant_configurations")
[[ $configs -eq $TENANTS ]] || fail "expected plan configs for $TENANTS tenants, found $configs"
workers=0
for c in $(podman ps --filter "label=io.podman.compose.project=$PROJECT" --format '{{.Names}}' | grep provisioner); do
  n=$(podman logs "$c" 2>&1 | grep -c 'tenant provisioned"' || true)
  say "  $c provisioned $n"
  (( n > 0 )) && workers=$((workers + 1))
done
say "provisioned $TENANTS tenants ($workers of 3 provisioners took part)"

# --- invalidation ------------------------------------------------------------------------------
say "invalidating t1_org's cache"
rc() { redis-cli -h 127.0.0.1 -p "$FLEET_REDIS_PORT" "$@"; }
{
  for k in $(seq 1 500); do
    echo "SET org:t1_org:k$k x"; echo "SET sessions:t1_org:s$k x"; echo "SET org:t10_org:k$k keep"
  done
} | rc >/dev/null
"$FLEETCTL" cache invalidate --org t1_org --session >/dev/null
gone() { [[ $(rc --scan --pattern 'org:t1_org:*' | wc -l) -eq 0 && $(rc --scan --pattern 'sessions:t1_org:*' | wc -l) -eq 0 ]]; }
wait_for 60 "t1_org's keys to go" gone
kept=$(rc --scan --pattern 'org:t10_org:*' | wc -l)
[[ $kept -eq 500 ]] || fail "another tenant's keys were touched: $kept of 500 left"
say "1000 keys of t1_org deleted, t10_org's 500 kept"

# --- backfill ----------------------------------------------------------------------------------
say "running a backfill through the containers"
psql_ -c "CREATE TABLE public.items (id bigint PRIMARY KEY, filled boolean NOT NULL DEFAULT false);
          INSERT INTO public.items (id) SELECT g FROM generate_series(1, 50000) g;"
cat > "$DEV/deploy-job.json" <<JSON
{"kind": "sql", "table": "items", "key": "id", "chunk_size": 5000,
 "statement": "UPDATE items SET filled = true WHERE id > \$1 AND id <= \$2"}
JSON
job=$("$FLEETCTL" backfill submit "$DEV/deploy-job.json")
succeeded() { [[ $("$FLEETCTL" backfill status "$job" --json | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d.get("progress", d).get("state"))' 2>/dev/null) == succeeded ]]; }
wait_for 180 "backfill $job to succeed" succeeded
filled=$(psql_ -c "SELECT count(*) FROM public.items WHERE filled")
[[ $filled -eq 50000 ]] || fail "backfill filled $filled of 50000 rows"
say "backfill $job filled 50000 rows"

dead=$("$FLEETCTL" dlq list --json | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))')
[[ $dead -eq 0 ]] || fail "$dead dead letters after the run"
say "PASSED: compose stack provisioned, invalidated and backfilled through the containers"
