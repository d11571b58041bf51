#!/usr/bin/env bash
# Runs `ringkv chaos` inside a network namespace made for it (and removed
# afterwards, whatever happens), so partitions and kills touch nothing else.
# Usage: scripts/chaos.sh RINGKV_BINARY [ringkv chaos flags...]
# Needs root (network namespaces and iptables).
set -euo pipefail
bin=$1
shift
if [ "$(id -u)" -ne 0 ]; then
    echo "chaos: needs root for network namespaces and iptables" >&2
    exit 1
fi
ns="ringkv-chaos-$$"
cleanup() {
    # Kill anything left in the namespace, then drop it.
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
    ip netns del "$ns" 2>/dev/null || true
}
trap cleanup EXIT INT TERM
ip netns add "$ns"
ip netns exec "$ns" ip link set lo up
ip netns exec "$ns" "$bin" chaos "$@"
