#!/usr/bin/env bash
# The cost of many shards: `ringkv bench` through the router of a playground
# (3 storenodes, splits off) started with each shard count in turn.
# Usage: scripts/bench-shards.sh RINGKV_BINARY SHARDS... (make bench-shards)
set -euo pipefail
bin=$1
shift
for n in "$@"; do
    dir=$(mktemp -d "${TMPDIR:-/tmp}/ringkv-bench-shards.XXXX")
    "$bin" playground --dir "$dir" --shards "$n" --shard-max-bytes 0 --split-detections 0 >"$dir/playground.out" 2>&1 &
    pg=$!
    trap 'kill -INT $pg 2>/dev/null; wait $pg 2>/dev/null; rm -rf "$dir"' EXIT
    for _ in $(seq 1 240); do
        grep -q "router gRPC" "$dir/playground.out" && break
        kill -0 "$pg" 2>/dev/null || { cat "$dir/playground.out" >&2; exit 1; }
        sleep 0.5
    done
    router=$(awk '/router gRPC/ {print $3}' "$dir/playground.out")
    echo "== $n shards (router $router)"
    "$bin" bench --router "$router" --duration 10 --clients 64 | tail -2
    kill -INT "$pg"
    wait "$pg" 2>/dev/null || true
    rm -rf "$dir"
    trap - EXIT
done
