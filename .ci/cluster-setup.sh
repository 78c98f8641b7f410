#!/usr/bin/env bash
# Prepare this machine for the real-cluster tests (tests/test_cluster.py): idempotent, safe to rerun.
#
#   1. apt-get install containerd runc containernetworking-plugins   (Debian's; only when one is missing). The
#      test cluster starts its own containerd on its own socket: no system service is used or changed.
#   2. check Go (>= 1.26; a newer toolchain comes through GOTOOLCHAIN=auto from the Go proxy)
#   3. build (or reuse from ~/.cache/aquarium-k8s/<version>) etcd and the Kubernetes components: tests/cluster/build.sh
#
# Prints `cluster-setup: ok` last on success; any failure prints one line and exits non-zero.
set -euo pipefail
cd "$(dirname "$0")/.."

die() { echo "cluster-setup: $*" >&2; exit 1; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo -n "$@"; fi; }
export PATH="$PATH:/usr/sbin:/sbin:/usr/local/go/bin"

# -- 1. packages --------------------------------------------------------------------------------------------------
need=()
command -v containerd >/dev/null 2>&1 || need+=(containerd)
command -v runc >/dev/null 2>&1 || need+=(runc)
[ -x /usr/lib/cni/ptp ] && [ -x /usr/lib/cni/host-local ] || need+=(containernetworking-plugins)
if [ ${#need[@]} -gt 0 ]; then
  echo "cluster-setup: installing ${need[*]}"
  as_root apt-get update -qq || die "apt-get update failed: check the network and /etc/apt/sources.list.d"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" \
    >/dev/null || die "apt-get install ${need[*]} failed: run it by hand to see why"
fi

# -- 2. Go --------------------------------------------------------------------------------------------------------
command -v go >/dev/null 2>&1 || die "Go is not installed: install Go >= 1.26 (https://go.dev/dl) and put it on PATH"
gov=$(go env GOVERSION 2>/dev/null | sed 's/^go//')
[ "$(printf '%s\n1.26\n' "${gov%%[a-z]*}" | sort -V | head -1)" = "1.26" ] \
  || die "Go $gov is too old: install Go >= 1.26 (https://go.dev/dl)"
# build.sh runs with GOTOOLCHAIN=auto unless it is set: a newer toolchain, if Kubernetes' go.mod asks for one,
# then comes from the Go proxy. An explicit `local` forbids that.
case "${GOTOOLCHAIN:-auto}" in
  local*) die "GOTOOLCHAIN=$GOTOOLCHAIN forbids the newer toolchain Kubernetes may need: unset it or set GOTOOLCHAIN=auto" ;;
esac

# -- 3. Kubernetes binaries ---------------------------------------------------------------------------------------
bin=$(bash tests/cluster/build.sh) || die "tests/cluster/build.sh failed (see its output above)"
echo "cluster-setup: ok (containerd $(containerd --version | awk '{print $3}'), go $gov, binaries in $bin)"
