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
# Namespaces left by a run that was killed outright (no trap ran): drop
# those with no process left in them; a live run's namespace has its pids.
for old in $(ip netns list 2>/dev/null | awk '/^ringkv-chaos-/ {print $1}'); do
    [ -z "$(ip netns pids "$old" 2>/dev/null)" ] && ip netns del "$old" 2>/dev/null || true
done
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
