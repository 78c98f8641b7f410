#!/usr/bin/env bash
# Build the test cluster's Kubernetes binaries from the Go module proxy, once per version.
#   tests/cluster/build.sh            -> prints the cache folder holding etcd, kube-apiserver, kube-controller-manager,
#                                        kube-scheduler, kubelet, kube-proxy
# k8s.io/kubernetes cannot be `go install`ed: its go.mod replaces every staging module with ./staging/src/k8s.io/*.
# So we write a wrapper module (in the cache, never in the clone) that requires k8s.io/kubernetes and replaces each
# staging module with its published v0.x twin, then build the cmd packages from it. etcd's server module comes in as
# k8s.io/kubernetes' own (indirect) dependency, so it builds from the same wrapper at the version Kubernetes tested.
set -euo pipefail
K8S_VERSION="${K8S_VERSION:-v1.37.2}"
CACHE="${AQUARIUM_K8S_CACHE:-$HOME/.cache/aquarium-k8s}/$K8S_VERSION"
BINS=(etcd kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy)

have_all() { for b in "${BINS[@]}"; do [ -x "$CACHE/bin/$b" ] || return 1; done; }
# One build at a time: a second caller (CI starts the build early, in the background) waits, then reuses it.
mkdir -p "$CACHE"
exec 9>"$CACHE/.build.lock"
flock 9
if have_all; then echo "$CACHE/bin"; exit 0; fi

command -v go >/dev/null || { echo "build.sh: Go is not installed; install Go >= 1.26 (https://go.dev/dl)" >&2; exit 2; }
export GOTOOLCHAIN="${GOTOOLCHAIN:-auto}" GOFLAGS="${GOFLAGS:--buildvcs=false}" CGO_ENABLED=0
start=$(date +%s)
mkdir -p "$CACHE/wrapper" "$CACHE/bin"
cd "$CACHE/wrapper"

# 1. The wrapper module: Kubernetes' own go/godebug lines, its staging modules pinned to the matching v0.x.
staging_version="v0.${K8S_VERSION#v1.}"
kmod=$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
{
  echo "module aquarium.test/k8s-build"
  grep -E '^(go|godebug) ' "$kmod"
  echo "require k8s.io/kubernetes $K8S_VERSION"
  sed -n 's#^\s*\(k8s.io/[a-z0-9-]*\) => ./staging/.*#replace \1 => \1 '"$staging_version"'#p' "$kmod"
} > go.mod
cat > tools.go <<'GO'
//go:build tools

package tools

import (
	_ "go.etcd.io/etcd/server/v3"
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
GO
etcd_version=$(grep -E '^\s*go.etcd.io/etcd/server/v3 ' "$kmod" | awk '{print $2}')
go get "k8s.io/kubernetes@$K8S_VERSION" "go.etcd.io/etcd/server/v3@$etcd_version" >/dev/null
go mod tidy -e >/dev/null 2>&1 || true
echo "build.sh: modules ready after $(( $(date +%s) - start )) s" >&2

# 2. The binaries, with the version stamped in (else they report v0.0.0-master).
v=k8s.io/component-base/version
minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
ldflags="-s -w -X $v.gitVersion=$K8S_VERSION -X $v.gitMajor=1 -X $v.gitMinor=$minor -X $v.gitTreeState=clean"
ldflags="$ldflags -X k8s.io/client-go/pkg/version.gitVersion=$K8S_VERSION"
go build -trimpath -ldflags "$ldflags" -o "$CACHE/bin/" \
  k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
  k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-proxy
go build -trimpath -ldflags "-s -w" -o "$CACHE/bin/etcd" go.etcd.io/etcd/server/v3
have_all || { echo "build.sh: build finished but a binary is missing in $CACHE/bin" >&2; exit 1; }
echo "build.sh: built ${BINS[*]} $K8S_VERSION in $(( $(date +%s) - start )) s" >&2
echo "$CACHE/bin"
