# Names, addresses and paths of the test cluster, shared by up.sh and down.sh (sourced, not run).
# Everything lives in the network namespace $NETNS; the host reaches it only through the veth pair
# $VETH_HOST <-> $VETH_NS (198.18.0.2 -> 198.18.0.1). All addresses are from 198.18.0.0/15 (RFC 2544 benchmarking).
K8S_VERSION=${K8S_VERSION:-v1.37.2}
NETNS=${AQK8S_NETNS:-aqk8s}
VETH_HOST=${NETNS}-h
VETH_NS=${NETNS}-n
NODE_IP=198.18.0.1             # on the namespace's lo: node IP, API server, S3 test server
HOST_IP=198.18.0.2             # the host's end of the veth pair
SERVICE_RANGE=198.18.128.0/24  # ClusterIPs (the `kubernetes` Service is 198.18.128.1)
POD_SUBNET=198.18.1.0/24       # CNI ptp + host-local: one /32 veth per pod, routes to 198.18.0.0/15 only
POD_GATEWAY=198.18.1.1
NODE=aqk8s-node
API_PORT=6443
STATE=${AQK8S_STATE:-/run/aqk8s}              # pids, certs, configs, logs, etcd's tmpfs: removed at teardown
DATA=${AQK8S_DATA:-/var/lib/aqk8s}            # containerd's root (imported images are kept between runs), kubelet
KUBELET_ROOT=$DATA/kubelet
CONTAINERD_SOCK=$STATE/containerd/containerd.sock
IMAGE=${AQK8S_IMAGE:-aquarium-sweep:cpu}
PAUSE_IMAGE=aqk8s/pause:1
# What the kubelet changes on the host at start (kubelet/cm/container_manager_linux.go setupKernelTunables).
SYSCTLS=(vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops kernel.keys.root_maxkeys
         kernel.keys.root_maxbytes)
# Host folders the kubelet or containerd may create outside $DATA; each one that did not exist is removed at teardown.
HOST_PATHS=(/var/log/pods /var/log/containers /var/lib/kubelet /usr/libexec/kubernetes /opt/containerd /etc/cni
            /var/lib/cni /run/netns)
# Stop order: the kubelet first (no restarts), etcd last.
COMPONENTS=(kubelet kube-proxy kube-scheduler kube-controller-manager kube-apiserver containerd etcd moto_server)
S3_PORT=9000

export PATH="$PATH:/usr/sbin:/sbin"
ctr_() { ctr --address "$CONTAINERD_SOCK" --namespace k8s.io "$@"; }
in_ns() { nsenter --net="/run/netns/$NETNS" -- "$@"; }
