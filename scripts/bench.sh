#!/usr/bin/env bash
# `make bench`: ringkv against etcd on this machine, in one sitting, through
# one harness (`ringkv bench`): 3 etcd members, then a playground (3
# placement, 3 storenodes, 1 router, 16 shards), then the playground with
# 1,000 shards; the same closed-loop loads over each one's gRPC API; a
# side-by-side table at the end (scripts/bench_table.py).
#
# Usage: scripts/bench.sh RINGKV_BINARY [OUT_DIR]
#   DURATION (seconds per phase, default 10), SKIP_ETCD=1, SKIP_16=1, SKIP_1000=1;
#   ALTERNATE=N instead: etcd and a 16-shard playground up together, puts and
#   gets at 64 clients on each in turn, N rounds, averaged.
set -euo pipefail
bin=$1
out=${2:-ringkv-data/bench-$(date +%Y%m%d-%H%M%S)}
duration=${DURATION:-10}
mkdir -p "$out"
results=$out/results.jsonl
touch "$results"
here=$(cd "$(dirname "$0")" && pwd)

pids=()
cleanup() {
    for p in "${pids[@]}"; do kill -INT "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    pids=()
}
trap cleanup EXIT

# The standard set: every target gets exactly these phases, in this order
# (puts first, so later reads find values).
standard_set() {
    local label=$1
    shift
    local b=("$bin" bench "$@" --label "$label" --json "$results" --duration "$duration")
    "${b[@]}" --clients 64 --workload put,get,a,b,c,f
    "${b[@]}" --clients 256 --workload put
    "${b[@]}" --clients 64 --workload a,b,f --distribution zipfian
    "${b[@]}" --clients 1 --connections 1 --workload put,get
}

wait_for() { # wait_for SECONDS CMD...: polls CMD every 0.5 s
    local deadline=$((SECONDS + $1))
    shift
    until "$@" >/dev/null 2>&1; do
        [ $SECONDS -lt $deadline ] || { echo "bench: timed out waiting for: $*" >&2; return 1; }
        sleep 0.5
    done
}

start_etcd() { # three members on loopback; sets endpoints and etcd_pids
    command -v etcd >/dev/null || { echo "bench: no etcd on PATH (make setup installs etcd-server)" >&2; exit 1; }
    etcd --version | head -1
    local cluster="" i
    for i in 1 2 3; do cluster+="${cluster:+,}e$i=http://127.0.0.1:$((23800 + i))"; done
    etcd_pids=()
    for i in 1 2 3; do
        etcd --name "e$i" --data-dir "$out/etcd-$i" \
            --listen-client-urls "http://127.0.0.1:$((23790 + i))" \
            --advertise-client-urls "http://127.0.0.1:$((23790 + i))" \
            --listen-peer-urls "http://127.0.0.1:$((23800 + i))" \
            --initial-advertise-peer-urls "http://127.0.0.1:$((23800 + i))" \
            --initial-cluster "$cluster" --initial-cluster-state new \
            --log-level error >"$out/etcd-$i.log" 2>&1 &
        pids+=($!)
        etcd_pids+=($!)
    done
    endpoints=127.0.0.1:23791,127.0.0.1:23792,127.0.0.1:23793
    wait_for 30 "$bin" bench --etcd "$endpoints" --duration 1 --clients 1 --workload put
}

playground() { # playground DIR SHARDS: starts one and waits for its router
    "$bin" playground --dir "$1" --shards "$2" --shard-max-bytes 0 --split-detections 0 --no-prometheus \
        >"$1.out" 2>&1 &
    pids+=($!)
    wait_for 120 grep -q "router gRPC" "$1.out"
    # Every shard led, and leaders spread, before the load starts.
    local placement
    placement=$(python3 -c 'import json, sys
print(",".join(p["grpc"] for p in json.load(open(sys.argv[1])) if p["role"] == "placement"))' "$1/playground.json")
    wait_for 120 settled "$placement" leaderless
    # Placement spreads leaders a few at a time: with many shards that can
    # outlast the wait, and the load then runs beside the balancer.
    wait_for 120 settled "$placement" balanced || echo "bench: leaders still being balanced; going on" >&2
}

settled() { # settled PLACEMENT leaderless|balanced
    "$bin" cluster status --placement "$1" -o json | python3 -c 'import json, sys
s = json.load(sys.stdin)
ok = s["leaderless"] == 0 and (sys.argv[1] != "balanced" or s["balanced"])
sys.exit(0 if ok else 1)' "$2"
}

if [ -n "${ALTERNATE:-}" ]; then
    # Both clusters up at once, the same load on each in turn, ALTERNATE
    # rounds: the fairest comparison on a noisy machine.
    start_etcd
    playground "$out/pg16" 16
    for round in $(seq 1 "$ALTERNATE"); do
        for w in put get; do
            echo "== round $round, $w"
            "$bin" bench --etcd "$endpoints" --cpu-pid "$(IFS=,; echo "${etcd_pids[*]}")" --label etcd \
                --json "$results" --duration "$duration" --clients 64 --workload "$w" | tail -1
            "$bin" bench --playground "$out/pg16" --label ringkv \
                --json "$results" --duration "$duration" --clients 64 --workload "$w" | tail -1
        done
    done
    python3 "$here/bench_table.py" --average "$results" | tee "$out/table.md"
    exit 0
fi

if [ "${SKIP_ETCD:-0}" != 1 ]; then
    start_etcd
    echo "== etcd (3 members, pids ${etcd_pids[*]})"
    standard_set etcd --etcd "$endpoints" --cpu-pid "$(IFS=,; echo "${etcd_pids[*]}")"
    cleanup
fi

if [ "${SKIP_16:-0}" != 1 ]; then
    echo "== ringkv (playground, 16 shards)"
    playground "$out/pg16" 16
    "$bin" bench --playground "$out/pg16" --label ringkv --json "$results" --duration "$duration" --workload idle
    standard_set ringkv --playground "$out/pg16"
    cleanup
fi

if [ "${SKIP_1000:-0}" != 1 ]; then
    echo "== ringkv (playground, 1000 shards)"
    playground "$out/pg1000" 1000
    "$bin" bench --playground "$out/pg1000" --label ringkv-1000 --json "$results" --duration "$duration" \
        --clients 64 --workload idle,put,get
    cleanup
fi

python3 "$here/bench_table.py" "$results" | tee "$out/table.md"
