#!/usr/bin/env python3
"""Structural check of ringkv's Grafana dashboards and Prometheus alerts.

    python3 deploy/check_dashboards.py                 # check; exit 1 on any failure
    python3 deploy/check_dashboards.py --list-queries  # one JSON line per query, nothing else

Checks (standard library only):

- every deploy/grafana/dashboards/*.json parses, has a uid, a title and
  schemaVersion 39, and is what deploy/grafana/gen_dashboards.py generates;
- panel ids are unique; grid positions lie within the 24 columns and do not
  overlap;
- a `datasource` template variable (type datasource, query prometheus)
  exists, and every panel, target and query variable uses it;
- every target has a non-empty `expr`, every panel sets a unit;
- every metric name used in a dashboard expression, a template variable or
  an expression of deploy/prometheus/alerts.yml is in the catalogue,
  docs/metrics.md, and so is every label a selector matches on (the node,
  job and instance labels every series has; `shard` for per-shard series;
  `le` for histogram buckets), and every label value a selector names when
  the catalogue lists that label's values. A rule on a metric or label the
  processes never export can never fire: this is the check that catches it.

--list-queries prints {"file", "panel", "expr", "query"} per dashboard
target and per alert rule: `query` is `expr` with Grafana's variables
replaced ($__rate_interval by 1m, $node/$shard/... by .*) so that it can be
sent to a Prometheus as is.
"""

import glob
import json
import os
import re
import signal
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
CATALOGUE = os.path.join(HERE, "..", "docs", "metrics.md")
DASHBOARDS = os.path.join(HERE, "grafana", "dashboards")
GENERATOR = os.path.join(HERE, "grafana", "gen_dashboards.py")
ALERTS = os.path.join(HERE, "prometheus", "alerts.yml")

DS = {"type": "prometheus", "uid": "${datasource}"}
COLUMNS = 24
COMMON_LABELS = {"node", "job", "instance"}
HIST_SUFFIXES = ("_bucket", "_sum", "_count")
METRIC_RE = re.compile(r"(?<![A-Za-z0-9_:])(ringkv_[a-z0-9_]+|process_[a-z_]+)")
SELECTOR_RE = re.compile(r"(?<![A-Za-z0-9_:])(ringkv_[a-z0-9_]+|process_[a-z_]+)\s*\{([^}]*)\}")
MATCHER_RE = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')
PLAIN_VALUE_RE = re.compile(r"^[A-Za-z0-9_]+$")

# A metric whose catalogue row does not list its label's values, but says
# they are another metric's: ringkv_placement_node_state is "labelled with
# its current state", the states ringkv_placement_nodes lists.
VALUES_OF = {("ringkv_placement_node_state", "state"): "ringkv_placement_nodes"}


def rel(path):
    return os.path.relpath(path, os.getcwd())


# ------------------------------------------------------------------- catalogue


class Catalogue:
    def __init__(self, path):
        self.types = {}      # name -> counter|gauge|histogram|?
        self.labels = {}     # name -> set of its own labels
        self.values = {}     # (name, label) -> set of values the catalogue lists
        with open(path) as f:
            text = f.read()
        for line in text.splitlines():
            m = re.match(r"^\|\s*`([a-z_0-9]+)(?:\{([a-z_,]+)\})?`\s*\|\s*([a-z]+)\s*\|(.*)\|\s*$", line)
            if m:
                name, labels, typ, meaning = m.groups()
                self._add(name, labels, typ)
                self._values(name, meaning)
        # names in prose (the process collector, ringkv_build_info{version})
        for m in re.finditer(r"`((?:ringkv|process)_[a-z_0-9]+)(?:\{([a-z_,]+)\})?`", text):
            name, labels = m.groups()
            if name not in self.types:
                typ = "counter" if name.endswith("_total") else "gauge"
                self._add(name, labels, typ)

    def _add(self, name, labels, typ):
        self.types[name] = typ
        own = set(labels.split(",")) if labels else set()
        if name.startswith("ringkv_shard_"):
            own.add("shard")   # the per-shard section: label `shard` is the Raft group id
        self.labels[name] = own

    def _values(self, name, meaning):
        own = self.labels[name] - {"shard"}
        if not own:
            return
        # parenthesised asides ("(PD's `pd_regions_status`)") unless the
        # values are only there ("shards split (`size`, `load`, `manual`)")
        outside = re.sub(r"\([^)]*\)", "", meaning)
        text = outside if re.search(r"`[a-z_]+`", outside) else meaning
        values = [v for v in re.findall(r"`([a-z_]+)`", text) if v not in own]
        if not values:
            return
        if len(own) == 1:
            label = next(iter(own))
        else:
            m = re.search(r"([a-z_]+)\s+`", text)
            label = m.group(1) if m and m.group(1) in own else None
        if label:
            self.values[(name, label)] = set(values)

    def resolve(self, name):
        """The catalogue name a series name belongs to, and whether it is a histogram series."""
        if name in self.types:
            return name, name.endswith("_bucket")
        for suffix in HIST_SUFFIXES:
            base = name[: -len(suffix)]
            if name.endswith(suffix) and self.types.get(base) == "histogram":
                return base, suffix == "_bucket"
        return None, False

    def allowed_values(self, name, label):
        if (name, label) in self.values:
            return self.values[(name, label)]
        other = VALUES_OF.get((name, label))
        return self.values.get((other, label)) if other else None


def check_expr(cat, expr, where, errors):
    """Metric names, selector labels and label values against the catalogue."""
    for m in METRIC_RE.finditer(expr):
        name = m.group(1)
        if cat.resolve(name)[0] is None:
            errors.append(f"{where}: metric {name} is not in docs/metrics.md")
    for m in SELECTOR_RE.finditer(expr):
        name, body = m.groups()
        base, bucket = cat.resolve(name)
        if base is None:
            continue
        allowed = COMMON_LABELS | cat.labels[base] | ({"le"} if bucket else set())
        for lm in MATCHER_RE.finditer(body):
            label, op, value = lm.groups()
            if label not in allowed:
                errors.append(f"{where}: {name} has no label {label!r} (docs/metrics.md: "
                              f"{', '.join(sorted(allowed))})")
                continue
            values = cat.allowed_values(base, label)
            if values is None or "$" in value:
                continue
            alternatives = value.split("|") if op in ("=~", "!~") else [value]
            for v in alternatives:
                if PLAIN_VALUE_RE.match(v) and v not in values:
                    errors.append(f"{where}: {name}{{{label}{op}\"{value}\"}}: {label} is never {v!r} "
                                  f"(docs/metrics.md: {', '.join(sorted(values))})")


# ------------------------------------------------------------------ dashboards


def all_panels(panels):
    for p in panels:
        yield p
        yield from all_panels(p.get("panels") or [])


def resolve_vars(expr, names):
    expr = expr.replace("$__rate_interval", "1m").replace("$__interval", "1m").replace("$__range", "1h")
    return re.sub(r"\$\{?(\w+)\}?", lambda m: ".*" if m.group(1) in names else m.group(0), expr)


def check_dashboard(cat, path, errors, queries):
    where = rel(path)
    try:
        with open(path) as f:
            d = json.load(f)
    except (OSError, ValueError) as e:
        errors.append(f"{where}: does not parse: {e}")
        return
    for key in ("uid", "title"):
        if not d.get(key):
            errors.append(f"{where}: no {key}")
    if d.get("schemaVersion") != 39:
        errors.append(f"{where}: schemaVersion {d.get('schemaVersion')}, want 39")

    variables = (d.get("templating") or {}).get("list") or []
    names = {v.get("name") for v in variables}
    if not any(v.get("name") == "datasource" and v.get("type") == "datasource" and v.get("query") == "prometheus"
               for v in variables):
        errors.append(f"{where}: no `datasource` template variable of type datasource, query prometheus")
    for v in variables:
        if v.get("type") != "query":
            continue
        if v.get("datasource") != DS:
            errors.append(f"{where}: variable {v.get('name')} does not use the datasource variable")
        q = v.get("query")
        q = q.get("query", "") if isinstance(q, dict) else (q or "")
        if not q.strip():
            errors.append(f"{where}: variable {v.get('name')} has no query")
        check_expr(cat, q, f"{where}: variable {v.get('name')}", errors)

    ids = {}
    cells = {}
    for p in all_panels(d.get("panels") or []):
        title = p.get("title") or "(untitled)"
        pw = f"{where}: panel {p.get('id')} {title!r}"
        pid = p.get("id")
        if not isinstance(pid, int):
            errors.append(f"{pw}: no integer id")
        elif pid in ids:
            errors.append(f"{pw}: id {pid} also used by {ids[pid]!r}")
        else:
            ids[pid] = title
        g = p.get("gridPos") or {}
        x, y, w, h = (g.get(k) for k in ("x", "y", "w", "h"))
        if not all(isinstance(v, int) for v in (x, y, w, h)) or w <= 0 or h <= 0 or x < 0 or y < 0:
            errors.append(f"{pw}: bad gridPos {g}")
        elif x + w > COLUMNS:
            errors.append(f"{pw}: gridPos {g} goes past column {COLUMNS}")
        else:
            for cx in range(x, x + w):
                for cy in range(y, y + h):
                    if (cx, cy) in cells:
                        errors.append(f"{pw}: gridPos {g} overlaps panel {cells[(cx, cy)]!r}")
                        break
                    cells[(cx, cy)] = title
                else:
                    continue
                break
        if p.get("type") == "row":
            continue
        if p.get("datasource") != DS:
            errors.append(f"{pw}: datasource {p.get('datasource')}, want {DS}")
        if not ((p.get("fieldConfig") or {}).get("defaults") or {}).get("unit"):
            errors.append(f"{pw}: no unit")
        targets = p.get("targets") or []
        if not targets:
            errors.append(f"{pw}: no targets")
        for t in targets:
            tw = f"{pw} target {t.get('refId')}"
            if t.get("datasource") != DS:
                errors.append(f"{tw}: datasource {t.get('datasource')}, want {DS}")
            expr = t.get("expr") or ""
            if not expr.strip():
                errors.append(f"{tw}: empty expr")
                continue
            check_expr(cat, expr, tw, errors)
            queries.append({"file": where, "panel": title, "expr": expr, "query": resolve_vars(expr, names)})


# ---------------------------------------------------------------------- alerts


def alert_exprs(path):
    """(alert name, expr) of a rules file, read without a YAML library:
    `expr:` either inline or a block scalar (| or >)."""
    with open(path) as f:
        lines = f.read().splitlines()
    out = []
    name = None
    i = 0
    while i < len(lines):
        line = lines[i]
        m = re.match(r"^\s*-?\s*(alert|record):\s*(\S+)", line)
        if m:
            name = m.group(2)
        m = re.match(r"^(\s*)expr:\s*(.*?)\s*$", line)
        if m:
            indent, value = len(m.group(1)), m.group(2)
            if value[:1] in ("|", ">"):
                block = []
                i += 1
                while i < len(lines) and (not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > indent):
                    block.append(lines[i].strip())
                    i += 1
                out.append((name, "\n".join(b for b in block if b)))
                continue
            if value[:1] in ("'", '"') and value[-1:] == value[:1]:
                value = value[1:-1]
            out.append((name, value))
        i += 1
    return out


def main():
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # --list-queries | head
    list_queries = "--list-queries" in sys.argv[1:]
    errors = []
    queries = []
    try:
        cat = Catalogue(CATALOGUE)
    except OSError as e:
        print(f"FAIL: cannot read the metric catalogue: {e}", file=sys.stderr)
        return 1
    if not cat.types:
        print(f"FAIL: no metric found in {rel(CATALOGUE)}", file=sys.stderr)
        return 1

    paths = sorted(glob.glob(os.path.join(DASHBOARDS, "*.json")))
    if not paths:
        errors.append(f"{rel(DASHBOARDS)}: no dashboard")
    uids = {}
    for path in paths:
        check_dashboard(cat, path, errors, queries)
        try:
            with open(path) as f:
                uid = json.load(f).get("uid")
            if uid in uids:
                errors.append(f"{rel(path)}: uid {uid} also used by {uids[uid]}")
            uids[uid] = rel(path)
        except (OSError, ValueError):
            pass

    try:
        rules = alert_exprs(ALERTS)
    except OSError as e:
        errors.append(f"cannot read {rel(ALERTS)}: {e}")
        rules = []
    if os.path.exists(ALERTS) and not rules:
        errors.append(f"{rel(ALERTS)}: no rule expression found")
    for name, expr in rules:
        where = f"{rel(ALERTS)}: {name}"
        if not expr.strip():
            errors.append(f"{where}: empty expr")
        check_expr(cat, expr, where, errors)
        queries.append({"file": rel(ALERTS), "panel": name, "expr": expr, "query": expr})

    if os.path.exists(GENERATOR):
        r = subprocess.run([sys.executable, GENERATOR, "--check"], capture_output=True, text=True)
        if r.returncode != 0:
            errors.append(f"{rel(GENERATOR)} --check: {r.stderr.strip() or r.stdout.strip()} "
                          "(edit the generator, not the JSON, and re-run it)")

    if list_queries:
        for q in queries:
            print(json.dumps(q))
    if errors:
        for e in errors:
            print(f"FAIL: {e}", file=sys.stderr)
        print(f"{len(errors)} failure(s)", file=sys.stderr)
        return 1
    if not list_queries:
        print(f"ok: {len(paths)} dashboards, {sum(1 for q in queries if q['file'] != rel(ALERTS))} dashboard "
              f"queries, {len(rules)} alert rules; {len(cat.types)} metrics in the catalogue")
    return 0


if __name__ == "__main__":
    sys.exit(main())
