#!/usr/bin/env bash
# Builds runnel's container images on a machine that has Docker but cannot
# pull from any container registry (only Debian's package mirror is reachable):
#
#   runnel-base:bookworm     Debian bookworm minbase + ca-certificates (debootstrap, docker import)
#   runnel-etcd:local        the same + Debian's etcd-server and etcd-client (etcd 3.4)
#   runnel-prometheus:local  the same + Debian's prometheus (for the `observability` profile)
#   runnel:local             deploy/docker/Dockerfile's `local` stage FROM runnel-base:bookworm,
#                            with the host-built target/release/runnel copied in
#
# The host is Debian bookworm too, so the binary's glibc matches the image's.
# Root filesystems are made once and cached as tarballs (RUNNEL_IMAGE_CACHE,
# default /var/tmp/runnel-image-cache); an image is imported again only when
# its tarball changed. Safe to run again: a second run takes seconds.
#
# Usage: deploy/build-local-images.sh [--build] [--no-prometheus] [--refresh]
#   --build          run `cargo build --release -p runnel --locked` first
#                    (without it the binary is built only when missing)
#   --no-prometheus  skip runnel-prometheus:local
#   --refresh        make the root filesystems again (new Debian packages)
# Environment: RUNNEL_IMAGE_CACHE, DEBIAN_MIRROR (default
# http://deb.debian.org/debian), RUNNEL_BINARY (default target/release/runnel),
# RUNNEL_LOCAL_IMAGE (default runnel:local).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
CACHE="${RUNNEL_IMAGE_CACHE:-/var/tmp/runnel-image-cache}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
SUITE=bookworm
BINARY="${RUNNEL_BINARY:-$ROOT/target/release/runnel}"
RUNNEL_TAG="${RUNNEL_LOCAL_IMAGE:-runnel:local}"
BASE_TAG=runnel-base:bookworm
ETCD_TAG=runnel-etcd:local
PROMETHEUS_TAG=runnel-prometheus:local
# Bump when the way a root filesystem is made changes, to invalidate caches.
RECIPE=2

build_binary=0
with_prometheus=1
refresh=0
for arg in "$@"; do
  case "$arg" in
    --build) build_binary=1 ;;
    --no-prometheus) with_prometheus=0 ;;
    --refresh) refresh=1 ;;
    -h | --help) sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "build-local-images: unknown argument $arg (try --help)" >&2; exit 2 ;;
  esac
done

log() { printf '[build-local-images] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 || die "debootstrap needs root: run as root or install sudo"
  SUDO=sudo
fi

command -v docker >/dev/null 2>&1 || die "docker is not installed"
docker info >/dev/null 2>&1 || die "the Docker daemon is not reachable (docker info failed)"
if ! command -v debootstrap >/dev/null 2>&1 && [ ! -x /usr/sbin/debootstrap ]; then
  log "installing debootstrap"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq debootstrap >/dev/null
fi
DEBOOTSTRAP="$(command -v debootstrap || echo /usr/sbin/debootstrap)"

$SUDO mkdir -p "$CACHE"
started=$SECONDS
WORK="$(mktemp -d "${TMPDIR:-/var/tmp}/runnel-images.XXXXXX")"
cleanup() { $SUDO rm -rf "$WORK"; }
trap cleanup EXIT

# rootfs NAME PACKAGES... -> prints the path of the cached tarball.
rootfs() {
  local name="$1"; shift
  local include
  include="$(IFS=,; echo "$*")"
  local key
  key="$(printf '%s|%s|%s|%s|%s' "$RECIPE" "$SUITE" "$MIRROR" "$include" "$(dpkg --print-architecture 2>/dev/null || uname -m)" | sha256sum | cut -c1-16)"
  local tarball="$CACHE/rootfs-$name-$key.tar"
  if [ "$refresh" = 1 ] && [ -f "$tarball" ]; then
    $SUDO rm -f "$tarball"
  fi
  if [ -f "$tarball" ]; then
    log "rootfs $name: cached ($tarball)"
  else
    local dir="$WORK/rootfs-$name"
    log "rootfs $name: debootstrap $SUITE with $include (about 30 s)"
    if ! $SUDO "$DEBOOTSTRAP" --variant=minbase --include="$include" "$SUITE" "$dir" "$MIRROR" \
      >"$WORK/debootstrap-$name.log" 2>&1; then
      tail -n 30 "$WORK/debootstrap-$name.log" >&2
      die "debootstrap of $name failed (log above)"
    fi
    # Smaller images: no package caches, indexes, docs or logs.
    $SUDO rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/cache/apt/*.bin \
      "$dir"/var/lib/apt/lists/* "$dir"/usr/share/doc/* "$dir"/usr/share/man/* \
      "$dir"/usr/share/info/* "$dir"/var/log/*.log "$dir"/var/log/apt/* "$dir"/tmp/*
    # What the Debian mirror and security archive are, for `apt-get` inside.
    printf 'deb %s %s main\ndeb %s %s-updates main\ndeb http://deb.debian.org/debian-security %s-security main\n' \
      "$MIRROR" "$SUITE" "$MIRROR" "$SUITE" "$SUITE" | $SUDO tee "$dir/etc/apt/sources.list" >/dev/null
    case "$name" in
      etcd) $SUDO mkdir -p "$dir/var/lib/etcd" ;;
      # As in the prom/prometheus image: data in /prometheus, owned by nobody.
      prometheus) $SUDO mkdir -p "$dir/prometheus" && $SUDO chown 65534:65534 "$dir/prometheus" ;;
    esac
    $SUDO tar --numeric-owner -C "$dir" -cf "$tarball.tmp.$$" .
    $SUDO mv -f "$tarball.tmp.$$" "$tarball"
    $SUDO rm -rf "$dir"
    log "rootfs $name: cached as $tarball ($(du -h "$tarball" | cut -f1))"
  fi
  echo "$tarball"
}

# import TAG TARBALL [--change ...]: imports unless TAG already came from TARBALL.
import() {
  local tag="$1" tarball="$2"; shift 2
  local key
  key="$(basename "$tarball" .tar)"
  if [ "$(docker image inspect -f '{{index .Config.Labels "dev.runnel.rootfs"}}' "$tag" 2>/dev/null || true)" = "$key" ]; then
    log "$tag: up to date"
    return
  fi
  log "$tag: docker import $tarball"
  docker import \
    --change "LABEL dev.runnel.rootfs=$key" \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    "$@" "$tarball" "$tag" >/dev/null
}

base_tar="$(rootfs base ca-certificates)"
import "$BASE_TAG" "$base_tar" --change 'CMD ["bash"]'

etcd_tar="$(rootfs etcd ca-certificates etcd-server etcd-client)"
# `etcd` is on PATH (/usr/bin) as in quay.io/coreos/etcd (/usr/local/bin), so
# compose.yaml's `command: ["etcd", ...]` runs with either image.
import "$ETCD_TAG" "$etcd_tar" \
  --change 'WORKDIR /var/lib/etcd' --change 'EXPOSE 2379 2380' --change 'CMD ["etcd"]'

if [ "$with_prometheus" = 1 ]; then
  prom_tar="$(rootfs prometheus ca-certificates prometheus)"
  # Same entrypoint contract as prom/prometheus (its binary is /bin/prometheus).
  import "$PROMETHEUS_TAG" "$prom_tar" \
    --change 'USER 65534:65534' --change 'WORKDIR /prometheus' --change 'EXPOSE 9090' \
    --change 'ENTRYPOINT ["/usr/bin/prometheus"]' \
    --change 'CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]'
fi

# The runnel binary, built on this host.
if [ "$build_binary" = 1 ] || [ ! -x "$BINARY" ]; then
  if [ "$BINARY" != "$ROOT/target/release/runnel" ]; then
    [ -x "$BINARY" ] || die "RUNNEL_BINARY=$BINARY does not exist"
  else
    log "building $BINARY (cargo build --release -p runnel --locked)"
    (cd "$ROOT" && cargo build --release -p runnel --locked)
  fi
fi
[ -x "$BINARY" ] || die "no runnel binary at $BINARY"
if [ -r /etc/os-release ] && ! grep -q '^VERSION_CODENAME=bookworm' /etc/os-release; then
  log "WARNING: this host is not Debian bookworm; the binary may need a newer glibc than the image has"
fi

# A small build context: the Dockerfile's `local` stage needs only these two
# files (the repository itself, with its multi-GB target/, is not sent).
ctx="$WORK/context"
mkdir -p "$ctx/deploy/docker/prebuilt"
cp "$ROOT/deploy/docker/runnel-healthcheck" "$ctx/deploy/docker/"
ln "$BINARY" "$ctx/deploy/docker/prebuilt/runnel" 2>/dev/null || cp "$BINARY" "$ctx/deploy/docker/prebuilt/runnel"

# Without the buildx plugin the Docker CLI refuses BuildKit; the legacy
# builder is fine for this Dockerfile (see its header).
if ! docker buildx version >/dev/null 2>&1; then
  export DOCKER_BUILDKIT=0
fi
previous="$(docker image inspect -f '{{.Id}}' "$RUNNEL_TAG" 2>/dev/null || true)"
log "$RUNNEL_TAG: docker build --target local (binary $(date -r "$BINARY" '+%F %T'))"
if ! docker build --quiet --target local \
  --build-arg RUNTIME_IMAGE="$BASE_TAG" \
  -f "$ROOT/deploy/docker/Dockerfile" -t "$RUNNEL_TAG" "$ctx" >"$WORK/build.log" 2>&1; then
  cat "$WORK/build.log" >&2
  die "docker build of $RUNNEL_TAG failed (log above)"
fi
# Each new binary leaves the previous image untagged (~200 MB): remove it
# unless a container still uses it.
if [ -n "$previous" ] && [ "$previous" != "$(docker image inspect -f '{{.Id}}' "$RUNNEL_TAG")" ]; then
  docker rmi "$previous" >/dev/null 2>&1 || true
fi

# Each image must run what compose.yaml asks of it.
version="$(docker run --rm "$RUNNEL_TAG" --version)" || die "$RUNNEL_TAG does not run 'runnel --version'"
etcd_version="$(docker run --rm "$ETCD_TAG" etcd --version | head -1)" || die "$ETCD_TAG does not run etcd"
docker run --rm "$ETCD_TAG" etcdctl version >/dev/null || die "$ETCD_TAG has no etcdctl"
prom_version=""
if [ "$with_prometheus" = 1 ]; then
  prom_version="$(docker run --rm "$PROMETHEUS_TAG" --version 2>&1 | head -1)" ||
    die "$PROMETHEUS_TAG does not run prometheus"
fi

echo "done in $((SECONDS - started)) s:"
for tag in "$BASE_TAG" "$ETCD_TAG" ${prom_version:+"$PROMETHEUS_TAG"} "$RUNNEL_TAG"; do
  printf '  %-26s %s  %s\n' "$tag" \
    "$(docker image inspect -f '{{.Id}}' "$tag" | cut -c8-19)" \
    "$(docker image inspect -f '{{.Size}}' "$tag" | awk '{printf "%d MB", $1/1000000}')"
done
echo "  ($version; $etcd_version${prom_version:+; $prom_version})"
echo "use them with: RUNNEL_IMAGE=$RUNNEL_TAG ETCD_IMAGE=$ETCD_TAG${prom_version:+ PROMETHEUS_IMAGE=$PROMETHEUS_TAG} docker compose up -d"
