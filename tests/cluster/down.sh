#!/usr/bin/env bash
# Tear the test cluster down and restore the host: safe to run any time, also after a crashed run (up.sh runs it
# first). Kills only processes this cluster started: the PIDs recorded in $STATE/pids, containerd's shims for our
# socket and the processes in our kubepods cgroups. Unmounts what the kubelet and containerd mounted, removes the
# cgroups, restores the sysctls the kubelet changed, deletes the network namespace, and removes the folders it made.
set -uo pipefail
cd "$(dirname "$0")/../.."
source tests/cluster/env.sh
[ "$(id -u)" = 0 ] || { echo "down.sh: must run as root (it ends the cluster's processes and unmounts)" >&2; exit 1; }
start=$(date +%s)

# pid_of NAME: the recorded PID when that process still runs the same program (no recycled PID is ever killed).
pid_of() {
  local pid
  pid=$(cat "$STATE/pids/$1" 2>/dev/null) || return 1
  [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "$1" && echo "$pid"
}

# stop PID...: SIGTERM, up to 10 s, then SIGKILL.
stop() {
  [ $# -gt 0 ] || return 0
  kill -TERM "$@" 2>/dev/null
  for _ in $(seq 1 50); do
    local alive=0
    for p in "$@"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ $alive = 0 ] && return 0
    sleep 0.2
  done
  kill -KILL "$@" 2>/dev/null
  sleep 0.5
}

# 1. The kubelet first, so nothing restarts; then every container through containerd while it still runs.
pid=$(pid_of kubelet) && stop "$pid"
if pid_of containerd >/dev/null; then
  for id in $(ctr_ tasks ls -q 2>/dev/null); do ctr_ tasks kill -s SIGKILL "$id" >/dev/null 2>&1; done
  sleep 1
  for id in $(ctr_ tasks ls -q 2>/dev/null); do ctr_ tasks delete -f "$id" >/dev/null 2>&1; done
  for id in $(ctr_ containers ls -q 2>/dev/null); do ctr_ containers delete "$id" >/dev/null 2>&1; done
fi

# 2. The control plane, containerd and etcd by their recorded PIDs.
for c in "${COMPONENTS[@]}"; do pid=$(pid_of "$c") && stop "$pid"; done

# 3. Leftovers of a crash: shims started for our socket, processes in our pod cgroups.
shims=$(grep -lsF -- "$CONTAINERD_SOCK" /proc/[0-9]*/cmdline | cut -d/ -f3)
stop $shims
for _ in 1 2 3; do
  procs=$(find /sys/fs/cgroup/*/kubepods -name cgroup.procs -exec cat {} + 2>/dev/null | sort -u)
  [ -n "$procs" ] || break
  kill -KILL $procs 2>/dev/null
  sleep 0.5
done

# 4. Mounts (container rootfs, /dev/shm, pod volumes, pod network namespaces), deepest first.
new_netns=$(comm -13 <(sort "$STATE/netns.before" 2>/dev/null) <(ls /run/netns 2>/dev/null | sort) | grep '^cni-' || true)
mounts=$(awk '{print $5}' /proc/self/mountinfo | grep -E "^($STATE|$DATA)/" || true)
for n in $new_netns; do mounts="$mounts /run/netns/$n"; done
for m in $(echo $mounts | tr ' ' '\n' | awk '{print length, $0}' | sort -rn | cut -d' ' -f2-); do
  umount -l "$m" 2>/dev/null
done
for n in $new_netns; do rm -f "/run/netns/$n"; done

# 5. Cgroups the kubelet made (kubepods did not exist before it ran): remove the empty tree, deepest first.
for d in /sys/fs/cgroup/*/kubepods; do
  [ -d "$d" ] && find "$d" -depth -type d -exec rmdir {} + 2>/dev/null
done

# 6. Sysctls the kubelet changed.
if [ -f "$STATE/sysctl.saved" ]; then
  while read -r key value; do sysctl -qw "$key=$value" >/dev/null 2>&1; done <"$STATE/sysctl.saved"
fi

# 7. Network: the veth pair goes with the namespace.
ip link del "$VETH_HOST" 2>/dev/null
ip netns del "$NETNS" 2>/dev/null

# 8. Folders: the ones made on the host, the kubelet's, and the state (pids, certs, logs, etcd tmpfs).
if [ -f "$STATE/created-paths" ]; then
  while read -r p; do
    [ -n "$p" ] && [ -e "$p" ] || continue
    if mountpoint -q "$p"; then  # /run/netns: `ip netns add` bind-mounts it; leave it if someone else uses it now
      [ -z "$(ls -A "$p")" ] && umount "$p" && rmdir "$p"
    else
      rm -rf --one-file-system "$p"
    fi
  done <"$STATE/created-paths"
fi
rm -rf --one-file-system "$KUBELET_ROOT" "$DATA/cni" "$STATE"

left=$(find /sys/fs/cgroup/*/kubepods -maxdepth 0 2>/dev/null; ip netns list 2>/dev/null | grep -w "$NETNS")
if [ -n "$left" ]; then
  echo "down.sh: could not remove: $left" >&2
  exit 1
fi
echo "cluster-down: done in $(( $(date +%s) - start )) s" >&2
