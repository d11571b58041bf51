#!/usr/bin/env python3
"""Side-by-side markdown table of `ringkv bench --json` results.

Usage: scripts/bench_table.py [--average] results.jsonl

With --average, rows seen several times (alternating rounds) show the mean
of their rounds; otherwise the last one wins.

Rows are (workload, key distribution, clients); columns are the targets in
the order they first appear (etcd first when `make bench` ran it), each with
ops/s, p50 and p99, then the ratio of every later target to the first one and
CPU microseconds per operation (all accounted server processes); an
`idle` row gives the servers' CPU per second with no load instead.
"""
import json
import sys


def mean(runs):
    """One row standing for several runs of the same load: the mean of
    each figure (errors summed)."""
    if len(runs) == 1:
        return runs[0]
    out = dict(runs[-1])
    for k in ("ops_per_sec", "p50_ms", "p99_ms", "p999_ms", "cpu_us_per_op", "cpu_cores"):
        vals = [r[k] for r in runs if r.get(k) is not None]
        out[k] = sum(vals) / len(vals) if vals else None
    out["errors"] = sum(r["errors"] for r in runs)
    return out


def main(path, average):
    rows, targets = {}, []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                r = json.loads(line)
            except json.JSONDecodeError as e:
                sys.exit(f"{path}:{n}: not JSON: {e}")
            key = (r["workload"], r["distribution"], r["clients"])
            if r["target"] not in targets:
                targets.append(r["target"])
            rows.setdefault(key, {}).setdefault(r["target"], []).append(r)
    rows = {k: {t: (mean(rs) if average else rs[-1]) for t, rs in by.items()} for k, by in rows.items()}
    if not targets:
        sys.exit(f"{path}: no results")
    base = targets[0]
    head = ["load"]
    for t in targets:
        head += [f"{t} ops/s", f"{t} p50 / p99 ms", f"{t} CPU µs/op"]
    head += [f"{t} / {base}" for t in targets[1:]]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for (workload, dist, clients), by in rows.items():
        cells = [f"{workload}, {dist}, {clients} client{'s' if clients != 1 else ''}"]
        for t in targets:
            r = by.get(t)
            if r is None:
                cells += ["–"] * 3
                continue
            if workload == "idle":
                cores = r.get("cpu_cores") or 0.0
                cells += ["–", "–", f"{cores * 100:.1f} % of a core"]
                continue
            cpu = r.get("cpu_us_per_op")
            cells += [
                f"{r['ops_per_sec']:,.0f}" + (f" ({r['errors']} errors)" if r["errors"] else ""),
                f"{r['p50_ms']:.2f} / {r['p99_ms']:.2f}",
                "–" if cpu is None else f"{cpu:.0f}",
            ]
        for t in targets[1:]:
            a, b = by.get(t), by.get(base)
            cells.append(f"{a['ops_per_sec'] / b['ops_per_sec']:.2f}×" if a and b and b["ops_per_sec"] else "–")
        if workload == "idle":
            cells[0] = "idle (no load)"

        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    args = sys.argv[1:]
    average = "--average" in args
    args = [a for a in args if a != "--average"]
    if len(args) != 1:
        sys.exit(__doc__)
    main(args[0], average)
