#!/usr/bin/env python3
"""Generates ringkv's Grafana dashboards (deploy/grafana/dashboards/*.json).

    python3 deploy/grafana/gen_dashboards.py          # rewrite the JSON files
    python3 deploy/grafana/gen_dashboards.py --check  # exit 1 if they are stale

Standard library only. The generated JSON is committed; edit this script,
not the JSON, and run deploy/check_dashboards.py afterwards. Metric names
and labels are those of docs/metrics.md.

Every panel and target reads the `datasource` template variable; panels are
laid out left to right, 24 columns wide, a new line when a panel does not
fit, so grid positions never overlap.
"""

import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "dashboards")

DS = {"type": "prometheus", "uid": "${datasource}"}
RATE = "$__rate_interval"

# Router outcomes that are the cluster's fault (invalid is the caller's).
ERROR_OUTCOMES = "unavailable|ambiguous|shed|error"


# --------------------------------------------------------------- building blocks


def target(expr, legend="", instant=False, table=False, ref=None):
    t = {"datasource": DS, "expr": expr, "legendFormat": legend, "refId": ref or "A"}
    if instant:
        t.update({"instant": True, "range": False})
    else:
        t.update({"instant": False, "range": True})
    if table:
        t["format"] = "table"
    return t


def thresholds(*steps):
    """steps: (color, value) pairs; the first value is None (base)."""
    return {"mode": "absolute", "steps": [{"color": c, "value": v} for c, v in steps]}


GREEN = thresholds(("green", None))


def timeseries(title, targets, unit, desc="", stack=False, min0=True, legend_table=False, max_=None):
    custom = {
        "drawStyle": "line",
        "lineWidth": 1,
        "fillOpacity": 10 if not stack else 30,
        "showPoints": "never",
        "spanNulls": False,
        "stacking": {"mode": "normal" if stack else "none", "group": "A"},
    }
    defaults = {"unit": unit, "custom": custom, "color": {"mode": "palette-classic"}, "thresholds": GREEN}
    if min0:
        defaults["min"] = 0
    if max_ is not None:
        defaults["max"] = max_
    legend = {"showLegend": True, "placement": "bottom", "displayMode": "list", "calcs": []}
    if legend_table:
        legend.update({"displayMode": "table", "calcs": ["mean", "max", "lastNotNull"]})
    return {
        "type": "timeseries",
        "title": title,
        "description": desc,
        "datasource": DS,
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {"legend": legend, "tooltip": {"mode": "multi", "sort": "desc"}},
        "targets": targets,
    }


def stat(title, targets, unit, desc="", steps=GREEN, text_mode="auto", no_value=None, mappings=None, graph=False):
    defaults = {"unit": unit, "thresholds": steps, "color": {"mode": "thresholds"}, "mappings": mappings or []}
    if no_value is not None:
        defaults["noValue"] = no_value
    return {
        "type": "stat",
        "title": title,
        "description": desc,
        "datasource": DS,
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "background",
            "graphMode": "area" if graph else "none",
            "justifyMode": "auto",
            "orientation": "auto",
            "textMode": text_mode,
        },
        "targets": targets,
    }


def table(title, targets, desc="", renames=None, exclude=(), units=None, order=None, sort_by=None, unit="none"):
    """An instant-query table: the targets' frames merged on their common
    labels, columns renamed/hidden/ordered by `organize`."""
    renames = renames or {}
    overrides = []
    for col, u in (units or {}).items():
        overrides.append({"matcher": {"id": "byName", "options": col}, "properties": [{"id": "unit", "value": u}]})
    organize = {
        "excludeByName": {name: True for name in ("Time",) + tuple(exclude)},
        "renameByName": renames,
        "indexByName": {name: i for i, name in enumerate(order or [])},
    }
    options = {"showHeader": True, "cellHeight": "sm", "footer": {"show": False, "reducer": ["sum"], "fields": ""}}
    if sort_by:
        options["sortBy"] = [{"displayName": sort_by, "desc": False}]
    return {
        "type": "table",
        "title": title,
        "description": desc,
        "datasource": DS,
        "fieldConfig": {
            "defaults": {"unit": unit, "thresholds": GREEN, "custom": {"align": "auto", "filterable": True}},
            "overrides": overrides,
        },
        "options": options,
        "transformations": [
            {"id": "merge", "options": {}},
            {"id": "organize", "options": organize},
        ],
        "targets": targets,
    }


def refs(targets):
    """Gives targets refIds A, B, C, ..."""
    for i, t in enumerate(targets):
        t["refId"] = chr(ord("A") + i)
    return targets


def hq(q, metric, sel, by):
    """histogram_quantile of a histogram's rate, grouped by `by` (and le)."""
    group = f"le, {by}" if by else "le"
    return f"histogram_quantile({q}, sum by ({group}) (rate({metric}_bucket{{{sel}}}[{RATE}])))"


def latency(title, metric, sel, by, legend, unit="s", desc=""):
    """p50 and p99 of a histogram, one line each per `by` group."""
    return timeseries(
        title,
        refs([
            target(hq(0.5, metric, sel, by), f"p50 {legend}"),
            target(hq(0.99, metric, sel, by), f"p99 {legend}"),
        ]),
        unit,
        desc=desc,
    )


class Layout:
    """Places panels left to right on a 24-column grid, rows below each other."""

    def __init__(self):
        self.panels = []
        self.x = 0
        self.y = 0
        self.line_h = 0

    def _id(self):
        return len(self.panels) + 1

    def newline(self):
        self.y += self.line_h
        self.x = 0
        self.line_h = 0

    def row(self, title):
        self.newline()
        self.panels.append({
            "type": "row", "title": title, "id": self._id(), "collapsed": False, "panels": [],
            "gridPos": {"x": 0, "y": self.y, "w": 24, "h": 1},
        })
        self.y += 1

    def add(self, panel, w=12, h=8):
        if self.x + w > 24:
            self.newline()
        panel["id"] = self._id()
        panel["gridPos"] = {"x": self.x, "y": self.y, "w": w, "h": h}
        self.panels.append(panel)
        self.x += w
        self.line_h = max(self.line_h, h)


def datasource_var():
    return {
        "name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
        "current": {}, "hide": 0, "includeAll": False, "multi": False, "options": [], "refresh": 1, "regex": "",
    }


def query_var(name, label, query, multi=True, include_all=True):
    v = {
        "name": name, "label": label, "type": "query", "datasource": DS,
        "query": {"query": query, "refId": "PrometheusVariableQueryEditor-VariableQuery"},
        "definition": query, "current": {}, "hide": 0, "options": [], "refresh": 2, "regex": "",
        "sort": 3, "multi": multi, "includeAll": include_all,
    }
    if include_all:
        v["allValue"] = ".*"
    return v


def dashboard(uid, title, desc, layout, variables):
    return {
        "uid": uid,
        "title": title,
        "description": desc,
        "tags": ["ringkv"],
        "timezone": "browser",
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-1h", "to": "now"},
        "links": [{
            "type": "dashboards", "tags": ["ringkv"], "asDropdown": True, "title": "ringkv dashboards",
            "includeVars": False, "keepTime": True, "icon": "external link", "targetBlank": False,
            "tooltip": "", "url": "",
        }],
        "annotations": {"list": []},
        "templating": {"list": [datasource_var()] + variables},
        "panels": layout.panels,
    }


def err_sel(extra=""):
    return f'outcome=~"{ERROR_OUTCOMES}"{extra}'


# ------------------------------------------------------------------- dashboards


def overview():
    L = Layout()
    L.row("Cluster")
    red_at_1 = thresholds(("green", None), ("red", 1))
    orange_at_1 = thresholds(("green", None), ("orange", 1))
    L.add(stat("Storenodes up", [target('sum(ringkv_placement_nodes{state="up"})', instant=True)], "none",
               desc="Storenodes placement sees UP (placement leader's view)."), w=3, h=4)
    L.add(stat("Storenodes down", [target('sum(ringkv_placement_nodes{state="down"})', instant=True)], "none",
               steps=red_at_1, desc="DOWN: silent for longer than --down-after-secs and not in maintenance."), w=3, h=4)
    L.add(stat("In maintenance", [target('sum(ringkv_placement_nodes{state="maintenance"})', instant=True)], "none",
               steps=orange_at_1, desc="Storenodes in planned maintenance (ringkv node maintenance ID on)."), w=3, h=4)
    L.add(stat("Processes not scraped",
               [target('count(up{job=~"storenode|placement|router"} == 0) or vector(0)', instant=True)], "none",
               steps=red_at_1, desc="Targets whose /metrics Prometheus cannot scrape."), w=3, h=4)
    L.add(stat("Placement leader", [target("max by (node) (ringkv_placement_is_leader) == 1", "member {{node}}",
                                           instant=True)], "none",
               text_mode="name", no_value="no leader", desc="The placement member that leads."), w=3, h=4)
    L.add(stat("Shards", [target("sum(ringkv_placement_shard_count)", instant=True)], "none"), w=3, h=4)
    L.add(stat("Leaderless shards", [target('sum(ringkv_placement_shards{status="leaderless"})', instant=True)],
               "none", steps=red_at_1), w=3, h=4)
    L.add(stat("Under-replicated shards",
               [target('sum(ringkv_placement_shards{status="under_replicated"})', instant=True)], "none",
               steps=orange_at_1), w=3, h=4)

    L.add(stat("Requests/s", [target(f"sum(rate(ringkv_router_requests_total[{RATE}]))")], "ops", graph=True,
               desc="API calls through every router."), w=3, h=4)
    L.add(stat("Error ratio",
               [target(f"(sum(rate(ringkv_router_requests_total{{{err_sel()}}}[{RATE}])) or vector(0))"
                       f" / sum(rate(ringkv_router_requests_total[{RATE}]))")],
               "percentunit", steps=thresholds(("green", None), ("red", 0.01)), graph=True,
               desc="Calls ended unavailable, ambiguous, shed or error (alert at 1%)."), w=3, h=4)
    L.add(stat("p99 latency", [target(hq(0.99, "ringkv_router_request_duration_seconds", "", ""))], "s",
               steps=thresholds(("green", None), ("orange", 1)), graph=True,
               desc="Router calls, all ops, retries included."), w=3, h=4)
    L.add(stat("Min disk free",
               [target("min(ringkv_disk_free_bytes / ringkv_disk_total_bytes)", instant=True)],
               "percentunit", steps=thresholds(("red", None), ("orange", 0.1), ("green", 0.2)),
               desc="The fullest storenode's free share of its data filesystem."), w=3, h=4)
    L.add(stat("Fenced replicas", [target("sum(ringkv_raft_replicas_failed)", instant=True)], "none",
               steps=orange_at_1), w=3, h=4)
    L.add(stat("Operators in flight", [target("sum(ringkv_placement_operators_in_flight)", instant=True)], "none",
               desc="Replica moves and leader transfers placement is running."), w=3, h=4)
    L.add(stat("Balanced", [target("max(ringkv_placement_balanced)", instant=True)], "none",
               steps=thresholds(("orange", None), ("green", 1)),
               mappings=[{"type": "value", "options": {"0": {"text": "no"}, "1": {"text": "yes"}}}]), w=3, h=4)
    L.add(stat("Alerts firing",
               [target('count(ALERTS{alertstate="firing", alertname=~"Ringkv.*"}) or vector(0)', instant=True)],
               "none", steps=red_at_1, desc="Firing alerts of deploy/prometheus/alerts.yml."), w=3, h=4)

    L.add(table("Alerts firing",
                [target('sum by (alertname, severity) (ALERTS{alertstate="firing", alertname=~"Ringkv.*"})',
                        instant=True, table=True)],
                renames={"alertname": "Alert", "severity": "Severity", "Value": "Series"},
                order=["alertname", "severity", "Value"]), w=24, h=5)

    L.row("Traffic")
    L.add(timeseries("Requests/s by op",
                     [target(f"sum by (op) (rate(ringkv_router_requests_total[{RATE}]))", "{{op}}")], "ops"))
    L.add(timeseries("Router p99 by op",
                     [target(hq(0.99, "ringkv_router_request_duration_seconds", "", "op"), "{{op}}")], "s"))
    L.add(timeseries("Errors/s by outcome",
                     [target(f"sum by (outcome) (rate(ringkv_router_requests_total{{{err_sel()}}}[{RATE}]))",
                             "{{outcome}}")], "ops"))
    L.add(timeseries("Raft fsync p99 by node",
                     [target(hq(0.99, "ringkv_raft_append_duration_seconds", "", "job, node"), "{{job}} {{node}}")],
                     "s", desc="Alert at 500ms for 10 minutes."))
    L.row("Capacity")
    L.add(timeseries("Leaders per storenode",
                     [target("sum by (storenode) (ringkv_placement_node_leaders)", "storenode {{storenode}}")],
                     "none"))
    L.add(timeseries("Disk free by storenode",
                     [target("ringkv_disk_free_bytes / ringkv_disk_total_bytes", "node {{node}}")],
                     "percentunit", max_=1))
    return dashboard("ringkv-overview", "ringkv / Overview",
                     "What to look at first: nodes, shard health, traffic, errors, latency, disk.", L, [])


def shard():
    L = Layout()
    sn = 'job="storenode"'
    L.row("Every shard")
    L.add(table(
        "Shards",
        refs([
            target(f"max by (shard, node) (ringkv_shard_is_leader{{{sn}}} == 1)", instant=True, table=True),
            target(f"count by (shard) (ringkv_shard_is_leader{{{sn}}})", instant=True, table=True),
            target(f"sum by (shard) (ringkv_shard_is_learner{{{sn}}})", instant=True, table=True),
            target(f"max by (shard) (ringkv_shard_follower_lag_entries{{{sn}}})", instant=True, table=True),
            target(f"max by (shard) (ringkv_shard_approximate_bytes{{{sn}}})", instant=True, table=True),
            target(f"max by (shard) (ringkv_shard_approximate_keys{{{sn}}})", instant=True, table=True),
            target(f"max by (shard) (ringkv_shard_reads_per_second{{{sn}}})", instant=True, table=True),
            target(f"max by (shard) (ringkv_shard_writes_per_second{{{sn}}})", instant=True, table=True),
            target(f"max by (shard) (ringkv_shard_term{{{sn}}})", instant=True, table=True),
        ]),
        desc="One row per shard: the leader's node (empty: leaderless), replicas reporting (learners among them), "
             "the worst follower lag, size and load as the leader measures them.",
        renames={"shard": "Shard", "node": "Leader node", "Value #B": "Replicas", "Value #C": "Learners",
                 "Value #D": "Max follower lag", "Value #E": "Size", "Value #F": "Keys",
                 "Value #G": "Reads/s", "Value #H": "Writes/s", "Value #I": "Term"},
        exclude=("Value #A",),
        order=["shard", "node", "Value #B", "Value #C", "Value #D", "Value #E", "Value #F", "Value #G",
               "Value #H", "Value #I"],
        units={"Size": "bytes", "Reads/s": "ops", "Writes/s": "ops", "Max follower lag": "short",
               "Keys": "short"},
        sort_by="Shard",
    ), w=24, h=10)

    s = 'shard=~"$shard"'
    L.row("Shard $shard")
    L.add(stat("Leader", [target(f"max by (node) (ringkv_shard_is_leader{{{s}}}) == 1", "{{job}} node {{node}}",
                                 instant=True)], "none", text_mode="name", no_value="no leader"), w=6, h=4)
    L.add(stat("Term", [target(f"max(ringkv_shard_term{{{s}}})", instant=True)], "none"), w=6, h=4)
    L.add(stat("Size", [target(f"max(ringkv_shard_approximate_bytes{{{s}}})", instant=True)], "bytes"), w=6, h=4)
    L.add(stat("Elections (1h)", [target(f"max(changes(ringkv_shard_term{{{s}}}[1h]))", instant=True)], "none",
               steps=thresholds(("green", None), ("orange", 3), ("red", 6)),
               desc="Times the term changed in the last hour (alert above 5)."), w=6, h=4)
    L.add(timeseries("Leader by node", [target(f"ringkv_shard_is_leader{{{s}}}", "{{job}} node {{node}}")], "none",
                     desc="1 on the replica that leads; a change of line is a leader change."))
    L.add(timeseries("Term", [target(f"ringkv_shard_term{{{s}}}", "node {{node}}")], "none", min0=False))
    L.add(timeseries("Commit and applied index", refs([
        target(f"ringkv_shard_commit_index{{{s}}}", "commit node {{node}}"),
        target(f"ringkv_shard_applied_index{{{s}}}", "applied node {{node}}"),
    ]), "none", min0=False))
    L.add(timeseries("Follower lag", [target(f"ringkv_shard_follower_lag_entries{{{s}}}", "peer {{peer}}")],
                     "short", desc="Leader's last index minus what each follower matched (alert above 1000)."))
    L.add(timeseries("Reads and writes/s", refs([
        target(f"max(ringkv_shard_reads_per_second{{{s}}})", "reads"),
        target(f"max(ringkv_shard_writes_per_second{{{s}}})", "writes"),
    ]), "ops"))
    L.add(timeseries("Size", [target(f"max(ringkv_shard_approximate_bytes{{{s}}})", "bytes on disk")], "bytes",
                     desc="On-disk bytes of the shard's data, as its leader measures them (splits at --shard-max-bytes)."))
    L.add(timeseries("Keys", [target(f"max(ringkv_shard_approximate_keys{{{s}}})", "keys")], "short"))
    L.add(timeseries("Raft log", refs([
        target(f"ringkv_shard_log_entries{{{s}}}", "entries node {{node}}"),
    ]), "short", desc="Entries not yet compacted, per replica."))
    L.add(timeseries("Raft log bytes", [target(f"ringkv_shard_log_bytes{{{s}}}", "node {{node}}")], "bytes"))
    L.add(timeseries("Proposals dropped/s",
                     [target(f"rate(ringkv_shard_proposals_dropped_total{{{s}}}[{RATE}])", "node {{node}}")], "ops"))
    L.add(timeseries("Snapshot installing / learner", refs([
        target(f"ringkv_shard_snapshot_installing{{{s}}}", "installing node {{node}}"),
        target(f"ringkv_shard_is_learner{{{s}}}", "learner node {{node}}"),
    ]), "none"))
    return dashboard("ringkv-shard", "ringkv / Shard",
                     "Every shard's health in one table, then one shard's Raft state, lag, size and load.", L,
                     [query_var("shard", "Shard", "label_values(ringkv_shard_is_leader, shard)", multi=False,
                                include_all=False)])


def storenode():
    L = Layout()
    n = 'job="storenode", node=~"$node"'
    i = 'job="storenode", instance=~"$instance"'
    L.row("Raft loop")
    L.add(latency("Raft pass duration", "ringkv_raft_pass_duration_seconds", n, "node", "node {{node}}",
                  desc="One pass of the Raft loop that had work: persist, send, apply."))
    L.add(latency("Raft append (fsync) duration", "ringkv_raft_append_duration_seconds", n, "node", "node {{node}}",
                  desc="The pass's synced write of Raft state (alert: p99 > 500ms)."))
    L.add(latency("Propose → commit", "ringkv_raft_propose_commit_duration_seconds", n, "node", "node {{node}}",
                  desc="On leaders: proposal accepted to entry committed."))
    L.add(latency("Commit → apply", "ringkv_raft_commit_apply_duration_seconds", n, "node", "node {{node}}",
                  desc="Entry committed to applied and answered (alert: p99 > 1s)."))
    L.add(latency("Read index (linearizable read)", "ringkv_raft_read_index_duration_seconds", n, "node",
                  "node {{node}}"))
    L.add(timeseries("Loop passes and fsyncs/s", refs([
        target(f"rate(ringkv_raft_loop_passes_total{{{n}}}[{RATE}])", "passes node {{node}}"),
        target(f"rate(ringkv_raft_fsyncs_total{{{n}}}[{RATE}])", "fsyncs node {{node}}"),
    ]), "ops"))
    L.add(latency("Readies per fsync", "ringkv_raft_readies_per_fsync", n, "node", "node {{node}}", unit="short",
                  desc="Replicas' Readies one synced write persists: the batching of the loop."))
    L.add(latency("Messages per batch", "ringkv_raft_messages_per_batch", n, "node", "node {{node}}", unit="short",
                  desc="Raft messages coalesced into one batch to a peer node."))
    L.add(timeseries("Raft messages/s", refs([
        target(f"rate(ringkv_raft_messages_sent_total{{{n}}}[{RATE}])", "sent node {{node}}"),
        target(f"rate(ringkv_raft_messages_received_total{{{n}}}[{RATE}])", "received node {{node}}"),
        target(f"rate(ringkv_raft_message_batches_sent_total{{{n}}}[{RATE}])", "batches node {{node}}"),
    ]), "ops"))
    L.add(timeseries("Raft messages dropped and stashed/s", refs([
        target(f"rate(ringkv_raft_messages_dropped_total{{{n}}}[{RATE}])", "dropped node {{node}}"),
        target(f"rate(ringkv_raft_messages_stashed_total{{{n}}}[{RATE}])", "stashed node {{node}}"),
    ]), "ops"))
    L.add(timeseries("Inbox depth", [target(f"ringkv_raft_inbox_depth{{{n}}}", "node {{node}}")], "short",
                     desc="Requests waiting for the Raft loop."))
    L.add(timeseries("Inbox full/s", [target(f"rate(ringkv_raft_inbox_full_total{{{n}}}[{RATE}])", "node {{node}}")],
                     "ops", desc="Requests refused busy (429 / RESOURCE_EXHAUSTED)."))
    L.add(timeseries("Entries applied/s",
                     [target(f"rate(ringkv_raft_entries_applied_total{{{n}}}[{RATE}])", "node {{node}}")], "ops"))
    L.add(timeseries("Apply bytes written/s by cf",
                     [target(f"sum by (node, cf) (rate(ringkv_raft_apply_bytes_written_total{{{n}}}[{RATE}]))",
                             "node {{node}} {{cf}}")], "Bps"))
    L.add(timeseries("Replicas, leaders and fenced replicas", refs([
        target(f"ringkv_raft_replicas{{{n}}}", "replicas node {{node}}"),
        target(f"sum by (node) (ringkv_shard_is_leader{{{n}}})", "leaders node {{node}}"),
        target(f"ringkv_raft_replicas_failed{{{n}}}", "fenced node {{node}}"),
    ]), "short"))
    L.add(timeseries("Leader changes seen and split replicas created (per hour)", refs([
        target(f"increase(ringkv_raft_leader_changes_seen_total{{{n}}}[1h])", "leader changes node {{node}}"),
        target(f"increase(ringkv_raft_split_replicas_created_total{{{n}}}[1h])", "split replicas node {{node}}"),
    ]), "short"))

    L.row("Snapshots")
    L.add(timeseries("Snapshot events/s",
                     [target(f"sum by (node, event) (rate(ringkv_raft_snapshots_total{{{n}}}[{RATE}]))",
                             "node {{node}} {{event}}")], "ops"), w=8)
    L.add(timeseries("Snapshots in progress",
                     [target(f"ringkv_raft_snapshots_in_progress{{{n}}}", "node {{node}} {{phase}}")], "short"), w=8)
    L.add(timeseries("Snapshot duration p99 by phase",
                     [target(hq(0.99, "ringkv_raft_snapshot_duration_seconds", n, "node, phase"),
                             "node {{node}} {{phase}}")], "s"), w=8)
    L.add(timeseries("Snapshot bytes/s", refs([
        target(f"rate(ringkv_raft_snapshot_bytes_sent_total{{{n}}}[{RATE}])", "sent node {{node}}"),
        target(f"rate(ringkv_raft_snapshot_bytes_received_total{{{n}}}[{RATE}])", "received node {{node}}"),
    ]), "Bps"), w=24)

    L.row("ShardKv requests")
    L.add(timeseries("Requests/s by method and result",
                     [target(f"sum by (node, method, result) (rate(ringkv_storenode_requests_total{{{n}}}[{RATE}]))",
                             "node {{node}} {{method}} {{result}}")], "ops"))
    L.add(timeseries("Request p99 by method",
                     [target(hq(0.99, "ringkv_storenode_request_duration_seconds", n, "node, method"),
                             "node {{node}} {{method}}")], "s"))

    L.row("RocksDB")
    L.add(timeseries("Memtables by cf", [target(f"ringkv_rocksdb_memtable_bytes{{{n}}}", "node {{node}} {{cf}}")],
                     "bytes"), w=8)
    L.add(timeseries("Live SST files by cf", [target(f"ringkv_rocksdb_sst_bytes{{{n}}}", "node {{node}} {{cf}}")],
                     "bytes"), w=8)
    L.add(timeseries("Pending compaction by cf",
                     [target(f"ringkv_rocksdb_pending_compaction_bytes{{{n}}}", "node {{node}} {{cf}}")], "bytes",
                     desc="RocksDB slows writes at 64 GiB and stops them at 256 GiB (defaults)."), w=8)
    L.add(timeseries("Estimated keys by cf",
                     [target(f"ringkv_rocksdb_estimated_keys{{{n}}}", "node {{node}} {{cf}}")], "short"), w=8)
    L.add(timeseries("Write stopped", [target(f"ringkv_rocksdb_write_stopped{{{n}}}", "node {{node}}")], "none",
                     desc="1 while RocksDB stops writes (L0 or pending-compaction limits)."), w=8)
    L.add(timeseries("Delayed write rate", [target(f"ringkv_rocksdb_delayed_write_rate_bytes{{{n}}}", "node {{node}}")],
                     "Bps", desc="The rate RocksDB slows writers to (0: not delayed)."), w=8)
    L.add(timeseries("Stall time (s/s)",
                     [target(f"rate(ringkv_rocksdb_stall_seconds_total{{{n}}}[{RATE}])", "node {{node}}")], "s",
                     desc="Seconds writers spent stalled per second."), w=8)
    L.add(timeseries("Block cache hit ratio", [target(
        f"sum by (node) (rate(ringkv_rocksdb_block_cache_hits_total{{{n}}}[{RATE}]))"
        f" / (sum by (node) (rate(ringkv_rocksdb_block_cache_hits_total{{{n}}}[{RATE}]))"
        f" + sum by (node) (rate(ringkv_rocksdb_block_cache_misses_total{{{n}}}[{RATE}])))",
        "node {{node}}")], "percentunit", max_=1))
    L.add(timeseries("Block cache usage",
                     [target(f"ringkv_rocksdb_block_cache_usage_bytes{{{n}}}", "node {{node}}")], "bytes"))

    L.row("Process and disk")
    L.add(timeseries("CPU", [target(f"rate(process_cpu_seconds_total{{{i}}}[{RATE}])", "{{instance}}")],
                     "percentunit", desc="CPU seconds per second (1 = one core)."), w=8)
    L.add(timeseries("Resident memory", [target(f"process_resident_memory_bytes{{{i}}}", "{{instance}}")],
                     "bytes"), w=8)
    L.add(timeseries("Open file descriptors", refs([
        target(f"process_open_fds{{{i}}}", "open {{instance}}"),
        target(f"process_max_fds{{{i}}}", "max {{instance}}"),
    ]), "short"), w=8)
    L.add(timeseries("Disk free", [target(
        f"ringkv_disk_free_bytes{{{n}}} / ringkv_disk_total_bytes{{{n}}}", "node {{node}}")],
        "percentunit", max_=1, desc="Alerts at 20% (warning) and 10% (critical)."), w=8)
    L.add(timeseries("Disk free and total", refs([
        target(f"ringkv_disk_free_bytes{{{n}}}", "free node {{node}}"),
        target(f"ringkv_disk_total_bytes{{{n}}}", "total node {{node}}"),
    ]), "bytes"), w=8)
    L.add(timeseries("Uptime", [target(f"time() - process_start_time_seconds{{{i}}}", "{{instance}}")], "s"), w=8)
    return dashboard("ringkv-storenode", "ringkv / Storenode",
                     "A storenode's Raft loop (pass, fsync, commit, apply), snapshots, requests, RocksDB, "
                     "process and disk.", L,
                     [query_var("node", "Storenode", 'label_values(ringkv_raft_replicas_failed{job="storenode"}, node)'),
                      query_var("instance", "Instance", 'label_values(up{job="storenode"}, instance)')])


def router():
    L = Layout()
    r = 'job="router", instance=~"$instance"'
    L.row("Traffic")
    L.add(stat("Requests/s", [target(f"sum(rate(ringkv_router_requests_total{{{r}}}[{RATE}]))")], "ops",
               graph=True), w=6, h=4)
    L.add(stat("Error ratio", [target(
        f"(sum(rate(ringkv_router_requests_total{{{r}, {err_sel()}}}[{RATE}])) or vector(0))"
        f" / sum(rate(ringkv_router_requests_total{{{r}}}[{RATE}]))")],
        "percentunit", steps=thresholds(("green", None), ("red", 0.01)), graph=True), w=6, h=4)
    L.add(stat("In flight", [target(f"sum(ringkv_router_in_flight{{{r}}})")], "short", graph=True), w=6, h=4)
    L.add(stat("Shard map version (min)", [target(f"min(ringkv_router_shard_map_version{{{r}}})", instant=True)],
               "none"), w=6, h=4)
    L.add(timeseries("Requests/s by op",
                     [target(f"sum by (op) (rate(ringkv_router_requests_total{{{r}}}[{RATE}]))", "{{op}}")], "ops"))
    L.add(timeseries("Requests/s by outcome",
                     [target(f"sum by (outcome) (rate(ringkv_router_requests_total{{{r}}}[{RATE}]))", "{{outcome}}")],
                     "ops"))
    L.add(timeseries("Latency p50 / p99 by op", refs([
        target(hq(0.5, "ringkv_router_request_duration_seconds", r, "op"), "p50 {{op}}"),
        target(hq(0.99, "ringkv_router_request_duration_seconds", r, "op"), "p99 {{op}}"),
    ]), "s", desc="API call latency, retries included."))
    L.add(timeseries("Errors/s by op and outcome",
                     [target(f"sum by (op, outcome) (rate(ringkv_router_requests_total{{{r}, {err_sel()}}}[{RATE}]))",
                             "{{op}} {{outcome}}")], "ops",
                     desc="unavailable: no leader or quorum in time (nothing written); ambiguous: deadline passed "
                          "after a write left; shed: refused under load; error: anything else."))
    L.add(timeseries("Retries/s by cause",
                     [target(f"sum by (cause) (rate(ringkv_router_retries_total{{{r}}}[{RATE}]))", "{{cause}}")],
                     "ops"))
    L.add(timeseries("Slow requests/s by op",
                     [target(f"sum by (op) (rate(ringkv_router_slow_requests_total{{{r}}}[{RATE}]))", "{{op}}")],
                     "ops", desc="Calls slower than --slow-request-ms (each logged once)."))
    L.add(timeseries("In flight by router", [target(f"ringkv_router_in_flight{{{r}}}", "{{instance}}")], "short"))
    L.add(timeseries("Requests/s by router",
                     [target(f"sum by (instance) (rate(ringkv_router_requests_total{{{r}}}[{RATE}]))",
                             "{{instance}}")], "ops"))
    L.row("Shard map")
    L.add(timeseries("Shard map version", [target(f"ringkv_router_shard_map_version{{{r}}}", "{{instance}}")],
                     "none", min0=False), w=8)
    L.add(timeseries("Shard map age", [target(f"ringkv_router_shard_map_age_seconds{{{r}}}", "{{instance}}")], "s",
                     desc="Seconds since placement last confirmed the map (watch event or fetch)."), w=8)
    L.add(timeseries("Shards: router's map and placement's", refs([
        target(f"ringkv_router_shard_map_shards{{{r}}}", "{{instance}}"),
        target("sum(ringkv_placement_shard_count)", "placement"),
    ]), "none"), w=8)
    L.row("Process")
    p = r
    L.add(timeseries("CPU", [target(f"rate(process_cpu_seconds_total{{{p}}}[{RATE}])", "{{instance}}")],
                     "percentunit"), w=8)
    L.add(timeseries("Resident memory", [target(f"process_resident_memory_bytes{{{p}}}", "{{instance}}")],
                     "bytes"), w=8)
    L.add(timeseries("Open file descriptors", [target(f"process_open_fds{{{p}}}", "{{instance}}")], "short"), w=8)
    return dashboard("ringkv-router", "ringkv / Router",
                     "Routers: calls by op and outcome, latency, retries, shard map.", L,
                     [query_var("instance", "Router", 'label_values(up{job="router"}, instance)')])


def placement():
    L = Layout()
    L.row("Placement")
    L.add(stat("Placement leader", [target("max by (node) (ringkv_placement_is_leader) == 1", "member {{node}}",
                                           instant=True)], "none", text_mode="name", no_value="no leader"),
          w=6, h=4)
    L.add(stat("Members up", [target('sum(up{job="placement"})', instant=True)], "none"), w=6, h=4)
    L.add(stat("Balanced", [target("max(ringkv_placement_balanced)", instant=True)], "none",
               steps=thresholds(("orange", None), ("green", 1)),
               mappings=[{"type": "value", "options": {"0": {"text": "no"}, "1": {"text": "yes"}}}]), w=6, h=4)
    L.add(stat("Blocked shards", [target("sum(ringkv_placement_blocked_shards)", instant=True)], "none",
               steps=thresholds(("green", None), ("orange", 1)),
               desc="Shards needing a move no storenode can take now (ringkv operator list says why)."), w=6, h=4)
    L.add(timeseries("Leader by member", [target("ringkv_placement_is_leader", "member {{node}}")], "none"))
    L.add(timeseries("Placement Raft: fsync and apply p99", refs([
        target(hq(0.99, "ringkv_raft_append_duration_seconds", 'job="placement"', "node"), "fsync member {{node}}"),
        target(hq(0.99, "ringkv_raft_commit_apply_duration_seconds", 'job="placement"', "node"),
               "apply member {{node}}"),
    ]), "s"))

    L.row("Storenodes")
    L.add(timeseries("Storenodes by state", [target("sum by (state) (ringkv_placement_nodes)", "{{state}}")], "none"))
    L.add(table("Storenode states", [target("max by (storenode, state) (ringkv_placement_node_state == 1)",
                                            instant=True, table=True)],
                renames={"storenode": "Storenode", "state": "State"}, exclude=("Value",),
                order=["storenode", "state"], sort_by="Storenode"))
    L.add(timeseries("Replicas per storenode",
                     [target("sum by (storenode) (ringkv_placement_node_replicas)", "storenode {{storenode}}")],
                     "none"))
    L.add(timeseries("Leaders per storenode",
                     [target("sum by (storenode) (ringkv_placement_node_leaders)", "storenode {{storenode}}")],
                     "none"))

    L.row("Shards")
    L.add(timeseries("Shards", [target("sum(ringkv_placement_shard_count)", "shards")], "none"))
    L.add(timeseries("Shards by status", [target("sum by (status) (ringkv_placement_shards)", "{{status}}")], "none",
                     desc="A shard may count in several."))

    L.row("Scheduling")
    L.add(timeseries("Operators in flight by kind",
                     [target("sum by (kind) (ringkv_placement_operators_in_flight)", "{{kind}}")], "none"))
    L.add(timeseries("Operators finished by kind and outcome (per 10m)",
                     [target("sum by (kind, outcome) (increase(ringkv_placement_operators_total[10m]))",
                             "{{kind}} {{outcome}}")], "short"))
    L.add(timeseries("Splits by reason (per 10m)",
                     [target("sum by (reason) (increase(ringkv_placement_splits_total[10m]))", "{{reason}}")],
                     "short"))
    L.add(timeseries("Leader transfers by reason (per 10m)",
                     [target("sum by (reason) (increase(ringkv_placement_leader_transfers_total[10m]))",
                             "{{reason}}")], "short"))
    L.add(timeseries("Snapshot bytes sent/s by storenode",
                     [target(f'rate(ringkv_raft_snapshot_bytes_sent_total{{job="storenode"}}[{RATE}])',
                             "node {{node}}")], "Bps", desc="Moves' data traffic."))
    L.add(timeseries("Split replicas created (per 10m)",
                     [target('sum(increase(ringkv_raft_split_replicas_created_total{job="storenode"}[10m]))',
                             "replicas")], "short"))
    return dashboard("ringkv-placement", "ringkv / Placement and scheduling",
                     "Placement's view: storenodes by state, shard health, replicas and leaders per node, "
                     "operators, splits, leader transfers.", L, [])


DASHBOARDS = {
    "ringkv-overview.json": overview,
    "ringkv-shard.json": shard,
    "ringkv-storenode.json": storenode,
    "ringkv-router.json": router,
    "ringkv-placement.json": placement,
}


def render(fn):
    return json.dumps(fn(), indent=2, sort_keys=False) + "\n"


def main():
    check = "--check" in sys.argv[1:]
    os.makedirs(OUT, exist_ok=True)
    stale = []
    for name, fn in DASHBOARDS.items():
        path = os.path.join(OUT, name)
        text = render(fn)
        if check:
            try:
                with open(path) as f:
                    if f.read() != text:
                        stale.append(name)
            except FileNotFoundError:
                stale.append(name)
        else:
            with open(path, "w") as f:
                f.write(text)
            print(f"wrote {os.path.relpath(path)}")
    if stale:
        print("stale (run deploy/grafana/gen_dashboards.py): " + ", ".join(stale), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
