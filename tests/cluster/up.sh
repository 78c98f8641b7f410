#!/usr/bin/env bash
# Bring up a one-node Kubernetes cluster for the tests, inside the network namespace $NETNS (tests/cluster/env.sh):
# etcd (tmpfs, no fsync), kube-apiserver (RBAC, default admission plugins), kube-controller-manager, kube-scheduler,
# Debian's containerd on its own socket, a kubelet and kube-proxy, all v1.37.2 built by build.sh. Prints the admin
# KUBECONFIG last; the API is reachable from the host at https://198.18.0.1:6443 through a veth pair, nothing else is.
#
#   tests/cluster/up.sh            AQK8S_SKIP_IMAGE=1: do not build/import the project's CPU image
#                                  AQK8S_S3_SERVER=path/to/moto_server: also an S3 server at http://198.18.0.1:9000
# Tear down with tests/cluster/down.sh (run first here too, so a crashed run leaves nothing behind).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
source tests/cluster/env.sh
die() { echo "up.sh: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "must run as root (network namespace, mounts, cgroups)"
for tool in containerd runc ctr openssl nsenter ip; do
  command -v "$tool" >/dev/null || die "$tool not found: run .ci/cluster-setup.sh"
done
[ -x /usr/lib/cni/ptp ] && [ -x /usr/lib/cni/host-local ] || die "CNI plugins missing: run .ci/cluster-setup.sh"

bash tests/cluster/down.sh >/dev/null 2>&1 || true
t0=$(date +%s)
BIN=$(bash tests/cluster/build.sh)
t_build=$(( $(date +%s) - t0 ))
mkdir -p "$STATE"/{pids,logs,pki,etcd,cni/net.d,cni/ipam} "$DATA" "$KUBELET_ROOT"

# start NAME CMD...: run CMD in the namespace, in its own session, logging to $STATE/logs/NAME.log; record its PID.
start() {
  local name=$1; shift
  setsid nsenter --net="/run/netns/$NETNS" -- "$@" >"$STATE/logs/$name.log" 2>&1 </dev/null &
  echo $! >"$STATE/pids/$name"
}
# wait_for WHAT SECONDS CMD...: poll CMD every second; on timeout show the log of WHAT and fail.
wait_for() {
  local what=$1 secs=$2; shift 2
  for _ in $(seq 1 "$secs"); do "$@" >/dev/null 2>&1 && return 0; sleep 1; done
  tail -n 20 "$STATE/logs/$what.log" >&2 2>/dev/null
  die "$what not ready within $secs s (log: $STATE/logs/$what.log; tear down with tests/cluster/down.sh)"
}

# 1. What we change on the host, recorded before anything runs: sysctls, folders that do not exist yet, netns.
for key in "${SYSCTLS[@]}"; do echo "$key $(sysctl -n "$key")"; done >"$STATE/sysctl.saved"
for p in "${HOST_PATHS[@]}"; do [ -e "$p" ] || echo "$p"; done >"$STATE/created-paths"
ls /run/netns 2>/dev/null >"$STATE/netns.before" || true

# 2. Network namespace: the node address on lo; a veth pair so the host (and only it) reaches 198.18.0.1.
ip netns add "$NETNS"
in_ns ip link set lo up
in_ns ip addr add "$NODE_IP/32" dev lo
ip link add "$VETH_HOST" type veth peer name "$VETH_NS" netns "$NETNS"
ip addr add "$HOST_IP/32" dev "$VETH_HOST"
ip link set "$VETH_HOST" up
in_ns ip link set "$VETH_NS" up
ip route add "$NODE_IP/32" dev "$VETH_HOST" src "$HOST_IP"
in_ns ip route add "$HOST_IP/32" dev "$VETH_NS" src "$NODE_IP"

# 3. Certificates (ECDSA P-256, a week) and kubeconfigs: one identity per component, admin in system:masters.
P=$STATE/pki
openssl ecparam -name prime256v1 -genkey -noout -out "$P/ca.key" 2>/dev/null
openssl req -x509 -new -key "$P/ca.key" -subj "/CN=aqk8s-ca" -days 7 -out "$P/ca.crt" 2>/dev/null
cert() {  # cert NAME SUBJECT EXTENSIONS
  openssl ecparam -name prime256v1 -genkey -noout -out "$P/$1.key" 2>/dev/null
  openssl req -new -key "$P/$1.key" -subj "$2" -out "$P/$1.csr" 2>/dev/null
  openssl x509 -req -in "$P/$1.csr" -CA "$P/ca.crt" -CAkey "$P/ca.key" -CAcreateserial -days 7 \
    -extfile <(printf '%b' "$3") -out "$P/$1.crt" 2>/dev/null
}
client="keyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth"
cert apiserver "/CN=kube-apiserver" "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=\
IP:$NODE_IP,IP:127.0.0.1,IP:${SERVICE_RANGE%.*}.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,\
DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
cert admin "/O=system:masters/CN=aqk8s-admin" "$client"
cert apiserver-kubelet "/O=system:masters/CN=kube-apiserver-kubelet-client" "$client"
cert controller-manager "/CN=system:kube-controller-manager" "$client"
cert scheduler "/CN=system:kube-scheduler" "$client"
cert kubelet "/O=system:nodes/CN=system:node:$NODE" "$client"
cert kube-proxy "/CN=system:kube-proxy" "$client"
openssl ecparam -name prime256v1 -genkey -noout -out "$P/sa.key" 2>/dev/null
openssl ec -in "$P/sa.key" -pubout -out "$P/sa.pub" 2>/dev/null
kubeconfig() {  # kubeconfig NAME -> $STATE/NAME.kubeconfig with NAME's client certificate
  cat >"$STATE/$1.kubeconfig" <<KC
apiVersion: v1
kind: Config
clusters: [{name: aqk8s, cluster: {server: "https://$NODE_IP:$API_PORT", certificate-authority: "$P/ca.crt"}}]
users: [{name: $1, user: {client-certificate: "$P/$1.crt", client-key: "$P/$1.key"}}]
contexts: [{name: aqk8s, context: {cluster: aqk8s, user: $1}}]
current-context: aqk8s
KC
}
for c in admin controller-manager scheduler kubelet kube-proxy; do kubeconfig "$c"; done
export KUBECONFIG=$STATE/admin.kubeconfig

# 4. etcd: data on tmpfs, no fsync (a test cluster), client port on the namespace's loopback only.
mount -t tmpfs -o size=1g aqk8s-etcd "$STATE/etcd"
start etcd "$BIN/etcd" --name aqk8s --data-dir "$STATE/etcd/data" --unsafe-no-fsync \
  --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
  --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
  --initial-cluster aqk8s=http://127.0.0.1:2380 --log-level warn

# 5. kube-apiserver: RBAC + Node authorization, the default admission plugins, service-account tokens; the lease
#    endpoint reconciler gives the `kubernetes` Service its endpoint 198.18.0.1:6443 (pods reach it via kube-proxy).
start kube-apiserver "$BIN/kube-apiserver" --etcd-servers http://127.0.0.1:2379 \
  --bind-address "$NODE_IP" --advertise-address "$NODE_IP" --secure-port "$API_PORT" \
  --authorization-mode Node,RBAC --client-ca-file "$P/ca.crt" \
  --tls-cert-file "$P/apiserver.crt" --tls-private-key-file "$P/apiserver.key" \
  --kubelet-client-certificate "$P/apiserver-kubelet.crt" --kubelet-client-key "$P/apiserver-kubelet.key" \
  --kubelet-preferred-address-types InternalIP \
  --service-account-issuer https://kubernetes.default.svc.cluster.local \
  --service-account-key-file "$P/sa.pub" --service-account-signing-key-file "$P/sa.key" \
  --service-cluster-ip-range "$SERVICE_RANGE" --endpoint-reconciler-type lease --profiling=false
wait_for kube-apiserver 120 curl -sf --cacert "$P/ca.crt" --cert "$P/admin.crt" --key "$P/admin.key" \
  "https://$NODE_IP:$API_PORT/readyz"
t_api=$(( $(date +%s) - t0 ))

# 6. Controller manager (Job, GC, TTL, service-account controllers) and scheduler; no leader election.
start kube-controller-manager "$BIN/kube-controller-manager" --kubeconfig "$STATE/controller-manager.kubeconfig" \
  --bind-address 127.0.0.1 --leader-elect=false --use-service-account-credentials \
  --service-account-private-key-file "$P/sa.key" --root-ca-file "$P/ca.crt" --profiling=false
start kube-scheduler "$BIN/kube-scheduler" --kubeconfig "$STATE/scheduler.kubeconfig" \
  --bind-address 127.0.0.1 --leader-elect=false --profiling=false

# 7. containerd: its own socket, root and state, cgroupfs, our pause image, CNI from $STATE/cni/net.d.
cat >"$STATE/containerd.toml" <<TOML
version = 2
root = "$DATA/containerd"
state = "$STATE/containerd"
[grpc]
  address = "$CONTAINERD_SOCK"
[plugins."io.containerd.internal.v1.opt"]
  path = "$DATA/containerd-opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "docker.io/$PAUSE_IMAGE"
  stream_server_address = "127.0.0.1"
  disable_apparmor = true
  restrict_oom_score_adj = true  # no CAP_SYS_RESOURCE here: the -998 of sandboxes would make runc fail to start
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$STATE/cni/net.d"
TOML
start containerd containerd --config "$STATE/containerd.toml"
wait_for containerd 60 ctr_ version
# leftovers of a crashed run in the kept root: no container survives into a new cluster
for id in $(ctr_ containers ls -q); do ctr_ tasks delete -f "$id" >/dev/null 2>&1 || true; ctr_ containers delete "$id"; done

# 8. Images: the pause image (a static Go program) and the project's CPU image, built by Docker, imported once
#    per Docker image ID (containerd's root is kept between runs).
import_image() {  # import_image DOCKER_IMAGE
  local id marker="$DATA/imported-$(echo "$1" | tr '/:' '__')"
  id=$(docker image inspect -f '{{.Id}}' "$1")
  if [ "$(cat "$marker" 2>/dev/null)" = "$id" ] && ctr_ images ls -q | grep -qx "docker.io/$1\|docker.io/library/$1"; then
    return 0
  fi
  docker save "$1" | ctr_ images import - >/dev/null
  echo "$id" >"$marker"
}
command -v docker >/dev/null && docker info >/dev/null 2>&1 || bash .ci/docker-setup.sh >&2
if ! docker image inspect "$PAUSE_IMAGE" >/dev/null 2>&1; then
  mkdir -p "$STATE/pause" && cp tests/cluster/pause/Dockerfile "$STATE/pause/"
  (cd tests/cluster/pause && CGO_ENABLED=0 GOFLAGS=-buildvcs=false go build -trimpath -ldflags "-s -w" \
     -o "$STATE/pause/pause" pause.go)
  docker build -q -t "$PAUSE_IMAGE" "$STATE/pause" >/dev/null
fi
import_image "$PAUSE_IMAGE"
t_image=$(date +%s)
if [ -z "${AQK8S_SKIP_IMAGE:-}" ]; then
  bash .ci/docker-setup.sh >&2
  ca=${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}
  make -s image TF_EXTRA=cpu IMAGE="$IMAGE" BASE_IMAGE="${AQUARIUM_TEST_BASE_IMAGE:-aquarium-base:bookworm}" \
    $( [ -f "$ca" ] && echo CA_BUNDLE="$ca") >"$STATE/logs/image.log" 2>&1 \
    || { tail -n 20 "$STATE/logs/image.log" >&2; die "make image failed (log: $STATE/logs/image.log)"; }
  import_image "$IMAGE"
fi
t_image=$(( $(date +%s) - t_image ))

# 9. CNI: ptp veth pairs and host-local addresses, routes to 198.18.0.0/15 only (no default route, no masquerade).
cat >"$STATE/cni/net.d/10-aqk8s.conflist" <<JSON
{"cniVersion": "0.4.0", "name": "aqk8s", "plugins": [{"type": "ptp", "ipMasq": false, "ipam": {
  "type": "host-local", "dataDir": "$STATE/cni/ipam", "ranges": [[{"subnet": "$POD_SUBNET", "gateway": "$POD_GATEWAY"}]],
  "routes": [{"dst": "198.18.0.0/15"}]}}]}
JSON
echo "nameserver $NODE_IP" >"$STATE/resolv.conf"   # nothing answers there: pods need no DNS

# 10. The kubelet: cgroup v1 (failCgroupV1: false), cgroupfs, low eviction thresholds, no swap check.
cat >"$STATE/kubelet.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
containerRuntimeEndpoint: unix://$CONTAINERD_SOCK
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
address: $NODE_IP
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
authentication: {anonymous: {enabled: false}, webhook: {enabled: false}, x509: {clientCAFile: "$P/ca.crt"}}
authorization: {mode: AlwaysAllow}
resolvConf: $STATE/resolv.conf
podLogsDir: $DATA/pod-logs
volumePluginDir: $KUBELET_ROOT/volume-plugins
evictionHard: {memory.available: 100Mi, nodefs.available: 1%, imagefs.available: 1%, nodefs.inodesFree: 1%}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
maxPods: 30
YAML
start kubelet "$BIN/kubelet" --config "$STATE/kubelet.yaml" --kubeconfig "$STATE/kubelet.kubeconfig" \
  --hostname-override "$NODE" --node-ip "$NODE_IP" --root-dir "$KUBELET_ROOT" --cert-dir "$STATE/kubelet-pki"
wait_for kubelet 120 kubectl wait --for condition=Ready "node/$NODE" --timeout 1s

# 11. One GPU on the node (status capacity; the kubelet keeps extended resources it does not manage), so the
#     scheduler places GPU variants; the default ServiceAccount (pods need it) comes from the controller manager.
kubectl patch node "$NODE" --subresource status --type merge \
  -p '{"status":{"capacity":{"nvidia.com/gpu":"1"},"allocatable":{"nvidia.com/gpu":"1"}}}' >/dev/null
wait_for kube-controller-manager 60 kubectl get serviceaccount default -n default
# 12. kube-proxy, iptables mode: its rules live in the namespace's own tables (gone with it), so pods reach the API
#     server at the `kubernetes` Service (198.18.128.1:443). Host-wide conntrack settings are left as they are (0)
#     and no oom_score_adj is set (no CAP_SYS_RESOURCE here).
start kube-proxy "$BIN/kube-proxy" --kubeconfig "$STATE/kube-proxy.kubeconfig" --proxy-mode iptables \
  --hostname-override "$NODE" --bind-address "$NODE_IP" --cluster-cidr "$POD_SUBNET" --nodeport-addresses primary \
  --oom-score-adj 0 --conntrack-max-per-core 0 --conntrack-tcp-timeout-established 0 \
  --conntrack-tcp-timeout-close-wait 0 \
  --metrics-bind-address 127.0.0.1:10249 --healthz-bind-address 127.0.0.1:10256 --profiling=false
wait_for kube-proxy 60 in_ns sh -c "iptables -t nat -S KUBE-SERVICES | grep -q ${SERVICE_RANGE%.*}.1/32"
# 13. Optionally the S3 test server (moto) on the node address, where pods and the host reach it.
if [ -n "${AQK8S_S3_SERVER:-}" ]; then
  start moto_server "$AQK8S_S3_SERVER" -H "$NODE_IP" -p "$S3_PORT"
  wait_for moto_server 60 curl -s "http://$NODE_IP:$S3_PORT/"
  echo "cluster-up: S3 server at http://$NODE_IP:$S3_PORT (any access key; create buckets with boto3 or aws s3 mb)" >&2
fi
t_up=$(( $(date +%s) - t0 ))
echo "cluster-up: ready in $t_up s (binaries $t_build s, API server at $t_api s, image build+import $t_image s)" >&2
echo "export KUBECONFIG=$KUBECONFIG"
