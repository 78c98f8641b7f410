#!/usr/bin/env bash
# Prepare this machine for the Docker test (tests/test_docker.py): idempotent, cached, safe to rerun.
#
#   1. apt-get install docker.io debootstrap        (only when dockerd or debootstrap is missing)
#   2. start dockerd --bridge=none --iptables=false (only when `docker info` fails); containers must use
#      --network host: no bridge network is ever created
#   3. build the base image aquarium-base:bookworm with debootstrap (no registry is reachable here), cached as a
#      tarball under $CACHE so a fresh daemon re-imports it in seconds
#
# Prints `docker-setup: ok` last on success; any failure prints one line and exits non-zero.
set -euo pipefail

BASE_IMAGE=${AQUARIUM_BASE_IMAGE:-aquarium-base:bookworm}
CACHE=${AQUARIUM_DOCKER_CACHE:-/var/cache/aquarium-docker}
LOG=${AQUARIUM_DOCKERD_LOG:-/var/log/aquarium-dockerd.log}
SUITE=bookworm

die() { echo "docker-setup: $*" >&2; exit 1; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo -n "$@"; fi; }

# -- 1. packages --------------------------------------------------------------------------------------------------
need=()
command -v dockerd >/dev/null 2>&1 || need+=(docker.io)
command -v debootstrap >/dev/null 2>&1 || [ -x /usr/sbin/debootstrap ] || need+=(debootstrap)
if [ ${#need[@]} -gt 0 ]; then
  echo "docker-setup: installing ${need[*]}"
  as_root apt-get update -qq || die "apt-get update failed: check the network and /etc/apt/sources.list.d"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" \
    >/dev/null || die "apt-get install ${need[*]} failed: run it by hand to see why"
fi
export PATH="$PATH:/usr/sbin:/sbin"

# -- 2. daemon ----------------------------------------------------------------------------------------------------
if ! docker info >/dev/null 2>&1; then
  echo "docker-setup: starting dockerd (log: $LOG)"
  as_root mkdir -p "$(dirname "$LOG")"
  # No bridge, no iptables: containers share the host network (docker run --network host).
  as_root nohup dockerd --bridge=none --iptables=false --ip-masq=false >>"$LOG" 2>&1 &
  for _ in $(seq 1 60); do
    docker info >/dev/null 2>&1 && break
    sleep 1
  done
  docker info >/dev/null 2>&1 || die "dockerd did not come up within 60 s: see $LOG"
fi

# -- 3. base image ------------------------------------------------------------------------------------------------
if ! docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
  tarball="$CACHE/$SUITE-minbase.tar"
  if [ ! -s "$tarball" ]; then
    mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
    [ -n "$mirror" ] || mirror=$(awk '/^deb / {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
    mirror=${mirror:-http://deb.debian.org/debian}
    rootfs="$CACHE/$SUITE-rootfs"
    echo "docker-setup: debootstrap --variant=minbase $SUITE from $mirror"
    as_root mkdir -p "$CACHE"
    as_root rm -rf "$rootfs"
    as_root debootstrap --variant=minbase "$SUITE" "$rootfs" "$mirror" >"$CACHE/debootstrap.log" 2>&1 \
      || die "debootstrap failed: see $CACHE/debootstrap.log"
    as_root rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    as_root tar -C "$rootfs" -cf "$tarball.part" . && as_root mv "$tarball.part" "$tarball"
    as_root rm -rf "$rootfs"
  fi
  echo "docker-setup: importing $BASE_IMAGE"
  docker import - "$BASE_IMAGE" <"$tarball" >/dev/null || die "docker import of $tarball failed"
fi

echo "docker-setup: ok ($(docker version --format '{{.Server.Version}}' 2>/dev/null), base $BASE_IMAGE)"
