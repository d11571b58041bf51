#!/usr/bin/env python3
"""Checks that the deployment files agree with each other and with ringkv.

    python3 deploy/check_deploy.py                  # exit 1 with a FAIL line per problem
    python3 deploy/check_deploy.py --list-commands  # one JSON object per `ringkv ...` command line
    python3 deploy/check_deploy.py --check-binary PATH/TO/ringkv
                                                    # also: every command line parses

What it reads: deploy/docker/docker-compose.yml (+ Dockerfile),
deploy/k8s/*.yaml, deploy/systemd/*.service and their TOML files, and
deploy/prometheus/prometheus-compose.yml. Python 3.11+ (tomllib) and
PyYAML (Debian: python3-yaml).

--list-commands prints, per command line found, a JSON object:

    {"source": "deploy/k8s/placement.yaml", "name": "statefulset/placement-0",
     "role": "placement", "argv": ["ringkv", "placement", "--id", "1", ...],
     "env": {"RINGKV_PLACEMENT": "..."}, "files": [{"path": "/etc/ringkv/x.toml",
     "from": "deploy/...", "text": "..."}], "needs": ["host-names"]}

`argv` is what the process gets (the image's ENTRYPOINT is `ringkv`; a
Kubernetes `$(VAR)` is replaced by the value the kubelet would give it, a pod
IP by 10.244.0.10; `--id-from-hostname` becomes each StatefulSet pod's
`--id` (ordinal plus one); a `sh -c` script is expanded for each StatefulSet
ordinal). `files` are the config files the command reads, with their text.
`needs` lists what the command line relies on beyond IP addresses:
"host-names" when a placement address is a DNS name (resolved at every
connection; see deploy/k8s/README.md). --check-binary runs each command
as `BIN ARGS... --help` with its env: clap parses every flag and value
before it reaches `--help`, so a misspelt flag or a malformed address
fails, and nothing is started.
"""

import ipaddress
import json
import os
import re
import shlex
import subprocess
import sys
import tomllib

try:
    import yaml
except ImportError:  # pragma: no cover
    sys.exit("check_deploy.py needs PyYAML (Debian: apt install python3-yaml)")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEPLOY = os.path.join(ROOT, "deploy")
ROLES = ("placement", "storenode", "router")
POD_IP = "10.244.0.10"

failures = []


def fail(where, msg):
    failures.append(f"FAIL {where}: {msg}")


def rel(path):
    return os.path.relpath(path, ROOT)


def read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


# ---------------------------------------------------------------- flags ---

def flag_values(argv, name):
    """Values of --name in argv (`--name V` and `--name=V`)."""
    out = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == f"--{name}" and i + 1 < len(argv):
            out.append(argv[i + 1])
            i += 2
            continue
        if a.startswith(f"--{name}="):
            out.append(a.split("=", 1)[1])
        i += 1
    return out


def flag(argv, name):
    v = flag_values(argv, name)
    return v[-1] if v else None


def split_hostport(addr):
    host, _, port = addr.rpartition(":")
    return host.strip("[]"), int(port) if port.isdigit() else None


def is_ip(host):
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


def rust_keys(path, struct):
    """Field names (as serde sees them) of `struct` in a Rust file."""
    text = read(os.path.join(ROOT, path))
    m = re.search(r"pub struct " + struct + r"\s*\{(.*?)\n\}", text, re.S)
    if not m:
        fail(path, f"struct {struct} not found")
        return set()
    keys, rename = set(), None
    for line in m.group(1).splitlines():
        line = line.strip()
        r = re.match(r'#\[serde\(rename = "([^"]+)"\)\]', line)
        if r:
            rename = r.group(1)
            continue
        if line.startswith("#[serde(skip)]"):
            rename = "\0skip"
            continue
        f = re.match(r"(?:pub\s+)?([a-z_][a-z0-9_]*)\s*:", line)
        if f:
            if rename != "\0skip":
                keys.add(rename or f.group(1))
            rename = None
    return keys


def toml_keys():
    """The keys each role's TOML file may hold (serde deny_unknown_fields)."""
    raft = rust_keys("raft/src/config.rs", "RaftConfig")
    limits = rust_keys("common/src/limits.rs", "Limits")
    return {
        "placement": (rust_keys("cli/src/cmd/placement.rs", "Args"), {}),
        "router": (rust_keys("cli/src/cmd/router.rs", "Args"), {}),
        "storenode": (rust_keys("storenode/src/config.rs", "StorenodeConfig"),
                      {"raft": raft, "limits": limits}),
    }


def check_toml(where, role, text, known):
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        fail(where, f"not TOML: {e}")
        return {}
    top, tables = known[role]
    for k, v in doc.items():
        if k in tables and isinstance(v, dict):
            for kk in v:
                if kk not in tables[k]:
                    fail(where, f"[{k}] {kk}: not a setting of ringkv {role}")
        elif k not in top:
            fail(where, f"{k}: not a setting of ringkv {role}")
    return doc


# ------------------------------------------------------------- commands ---

commands = []


def add_command(source, name, argv, env=None, files=None):
    role = argv[1] if len(argv) > 1 else None
    if argv[0] != "ringkv" or role not in ROLES:
        fail(source, f"{name}: not a ringkv server command: {argv[:2]}")
    cmd = {"source": source, "name": name, "role": role, "argv": argv,
           "env": env or {}, "files": files or [], "needs": []}
    commands.append(cmd)
    return cmd


def placement_addrs(cmd, file_docs):
    """Placement addresses a command gives: --member (without ids), --placement, env, TOML."""
    argv, role = cmd["argv"], cmd["role"]
    if role == "placement":
        out = [m.split("=", 1)[1] for m in flag_values(argv, "member") if "=" in m]
        for d in file_docs:
            out += [m.split("=", 1)[1] for m in d.get("members", []) if "=" in m]
        return out
    out = []
    for v in flag_values(argv, "placement"):
        out += v.split(",") if role == "router" else [v]
    if role == "router" and not out and "RINGKV_PLACEMENT" in cmd["env"]:
        out = cmd["env"]["RINGKV_PLACEMENT"].split(",")
    for d in file_docs:
        if not out:
            out = list(d.get("placement", []))
    return out


def mark_needs(cmd, file_docs):
    addrs = placement_addrs(cmd, file_docs)
    # The storenode's TOML `placement` is not parsed as IP:PORT: host names work there.
    checked = addrs
    if cmd["role"] == "storenode":
        checked = flag_values(cmd["argv"], "placement")
    if any(not is_ip(split_hostport(a)[0]) for a in checked):
        cmd["needs"].append("host-names")


# --------------------------------------------------------------- compose ---

def check_compose(known):
    path = os.path.join(DEPLOY, "docker/docker-compose.yml")
    src = rel(path)
    doc = yaml.safe_load(read(path))
    services = doc.get("services", {})
    nets = doc.get("networks", {})
    subnet = ip_range = None
    for net in nets.values():
        for c in ((net or {}).get("ipam") or {}).get("config", []):
            subnet = ipaddress.ip_network(c["subnet"])
            ip_range = ipaddress.ip_network(c["ip_range"]) if "ip_range" in c else None

    dockerfile = read(os.path.join(DEPLOY, "docker/Dockerfile"))
    exposed = set()
    for line in dockerfile.splitlines():
        if line.startswith("EXPOSE"):
            exposed |= {int(p.split("/")[0]) for p in line.split()[1:] if p.split("/")[0].isdigit()}
    if 'ENTRYPOINT ["ringkv"]' not in dockerfile:
        fail("deploy/docker/Dockerfile", 'ENTRYPOINT is not ["ringkv"] (compose commands are ringkv arguments)')
    if not re.search(r"^USER\s+(?!0\b|root\b)", dockerfile, re.M):
        fail("deploy/docker/Dockerfile", "no non-root USER")

    by_role = {r: {} for r in ROLES}
    for name, svc in services.items():
        image = str(svc.get("image", ""))
        if not (image.startswith("ringkv") or "build" in svc):
            continue
        argv = ["ringkv"] + [str(a) for a in svc.get("command", [])]
        env = {k: str(v) for k, v in (svc.get("environment") or {}).items()}
        cmd = add_command(src, name, argv, env)
        mark_needs(cmd, [])
        if cmd["needs"]:
            fail(src, f"{name}: relies on {cmd['needs']} that the binary does not accept")
        role = cmd["role"]
        by_role.setdefault(role, {})[name] = (svc, cmd)
        ip = (((svc.get("networks") or {}).get("ringkv")) or {}).get("ipv4_address")
        if role in ("placement", "storenode"):
            if not ip:
                fail(src, f"{name}: no fixed ipv4_address (its --listen address is what others dial)")
            else:
                if subnet and ipaddress.ip_address(ip) not in subnet:
                    fail(src, f"{name}: {ip} is outside the subnet {subnet}")
                if ip_range and ipaddress.ip_address(ip) in ip_range:
                    fail(src, f"{name}: {ip} is inside ip_range {ip_range}, where Docker hands out addresses")
                listen = flag(argv, "listen")
                if not listen or split_hostport(listen)[0] != ip:
                    fail(src, f"{name}: --listen {listen} is not on its address {ip}")
        if role == "storenode" and flag(argv, "node-id"):
            fail(src, f"{name}: storenodes get their id from placement; no --node-id")
        http = flag(argv, "http")
        if not http:
            fail(src, f"{name}: no --http (Prometheus and the healthcheck need it)")
            continue
        hport = split_hostport(http)[1]
        for p in (split_hostport(http)[1], split_hostport(flag(argv, "listen") or ":0")[1]):
            if p and p not in exposed:
                fail(src, f"{name}: port {p} is not EXPOSEd by the Dockerfile")
        test = " ".join(map(str, (svc.get("healthcheck") or {}).get("test", [])))
        m = re.search(r"http://[^/\s]+:(\d+)(/\S*)", test)
        if not m:
            fail(src, f"{name}: no HTTP healthcheck")
        elif int(m.group(1)) != hport or m.group(2) != "/readyz":
            fail(src, f"{name}: healthcheck {m.group(0)} is not /readyz on --http port {hport}")
        if "/var/lib/ringkv" not in " ".join(map(str, svc.get("volumes", []))) and role != "router":
            fail(src, f"{name}: no volume on /var/lib/ringkv")
        dd = flag(argv, "data-dir")
        if role != "router" and (not dd or not dd.startswith("/var/lib/ringkv/")):
            fail(src, f"{name}: --data-dir {dd} is not under the /var/lib/ringkv volume")

    # Placement members: ids, addresses and every client's list agree.
    members = {}
    for name, (svc, cmd) in by_role["placement"].items():
        members[int(flag(cmd["argv"], "id") or 1)] = flag(cmd["argv"], "listen")
    for name, (svc, cmd) in by_role["placement"].items():
        given = {}
        for m in flag_values(cmd["argv"], "member"):
            i, _, a = m.partition("=")
            given[int(i)] = a
        if given != members:
            fail(src, f"{name}: --member {given} is not the members as they listen {members}")
    want = sorted(members.values())
    for role in ("storenode", "router"):
        for name, (svc, cmd) in by_role[role].items():
            got = sorted(placement_addrs(cmd, []))
            if got != want:
                fail(src, f"{name}: placement addresses {got} are not the members {want}")
            deps = set(svc.get("depends_on") or {})
            missing = {n for n in by_role["placement"] if n not in deps}
            if missing:
                fail(src, f"{name}: does not wait for {sorted(missing)}")

    # Prometheus: the compose config scrapes exactly these services on their HTTP ports.
    prom_path = os.path.join(DEPLOY, "prometheus/prometheus-compose.yml")
    prom = yaml.safe_load(read(prom_path))
    targets = {}
    for job in prom.get("scrape_configs", []):
        for sc in job.get("static_configs", []):
            for t in sc.get("targets", []):
                targets[t] = job["job_name"]
    expected = {}
    for role in ROLES:
        for name, (svc, cmd) in by_role[role].items():
            expected[f"{name}:{split_hostport(flag(cmd['argv'], 'http'))[1]}"] = role
    for t, job in targets.items():
        if t not in expected:
            fail(rel(prom_path), f"target {t} (job {job}) is no compose service on its --http port")
        elif expected[t] != job:
            fail(rel(prom_path), f"target {t} is in job {job}, but the service runs ringkv {expected[t]}")
    for t in expected:
        if t not in targets:
            fail(src, f"{t} is not scraped by {rel(prom_path)}")

    p = services.get("prometheus")
    if not p:
        fail(src, "no prometheus service")
    else:
        mounts = [str(v) for v in p.get("volumes", [])]
        for host, inside in (("../prometheus/prometheus-compose.yml", "/etc/prometheus/prometheus.yml"),
                             ("../prometheus/alerts.yml", "/etc/prometheus/alerts.yml")):
            if not any(m.startswith(f"{host}:{inside}") for m in mounts):
                fail(src, f"prometheus: {host} is not mounted on {inside}")
    g = services.get("grafana")
    if not g:
        fail(src, "no grafana service")
    else:
        env = {k: str(v) for k, v in (g.get("environment") or {}).items()}
        mounts = {}
        for v in g.get("volumes", []):
            parts = str(v).split(":")
            mounts[parts[1]] = parts[0]
        if mounts.get("/etc/grafana/provisioning") != "../grafana/provisioning":
            fail(src, "grafana: deploy/grafana/provisioning is not on /etc/grafana/provisioning")
        if mounts.get(env.get("RINGKV_DASHBOARDS_DIR", "\0")) != "../grafana/dashboards":
            fail(src, "grafana: RINGKV_DASHBOARDS_DIR is not where deploy/grafana/dashboards is mounted")
        url = env.get("RINGKV_PROMETHEUS_URL", "")
        if url != "http://prometheus:9090":
            fail(src, f"grafana: RINGKV_PROMETHEUS_URL {url!r} is not the prometheus service")
        prov = read(os.path.join(DEPLOY, "grafana/provisioning/datasources/prometheus.yml"))
        prov += read(os.path.join(DEPLOY, "grafana/provisioning/dashboards/ringkv.yml"))
        for var in re.findall(r"\$\{(\w+)\}", prov):
            if var not in env:
                fail(src, f"grafana: ${{{var}}} of deploy/grafana/provisioning is not set")
    for name, svc in services.items():
        for v in svc.get("volumes", []):
            host = str(v).split(":")[0]
            if host.startswith("."):
                if not os.path.exists(os.path.join(DEPLOY, "docker", host)):
                    fail(src, f"{name}: mounts {host}, which does not exist")


# ------------------------------------------------------------------- k8s ---

def k8s_docs():
    out = []
    for f in sorted(os.listdir(os.path.join(DEPLOY, "k8s"))):
        if f.endswith(".yaml") and f != "kustomization.yaml":
            path = os.path.join(DEPLOY, "k8s", f)
            for d in yaml.safe_load_all(read(path)):
                if d:
                    out.append((rel(path), d))
    return out


def k8s_expand(s, env):
    return re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), s)


def check_k8s(known):
    docs = k8s_docs()
    kust = yaml.safe_load(read(os.path.join(DEPLOY, "k8s/kustomization.yaml")))
    files = {os.path.basename(s) for s, _ in docs}
    if set(kust.get("resources", [])) != files:
        fail("deploy/k8s/kustomization.yaml", f"resources {kust.get('resources')} are not the manifests {sorted(files)}")
    by_kind = {}
    for src, d in docs:
        by_kind.setdefault(d["kind"], []).append((src, d))
    configmaps = {d["metadata"]["name"]: d for _, d in by_kind.get("ConfigMap", [])}
    services = {d["metadata"]["name"]: (src, d) for src, d in by_kind.get("Service", [])}
    workloads = by_kind.get("StatefulSet", []) + by_kind.get("Deployment", [])

    def selects(selector, labels):
        return all(labels.get(k) == v for k, v in selector.items())

    sts_names = {}
    placement_members = {}  # id -> address
    placement_clients = []
    for src, w in workloads:
        kind, name = w["kind"], w["metadata"]["name"]
        where = f"{src} {kind.lower()}/{name}"
        spec = w["spec"]
        tmpl = spec["template"]
        labels = tmpl["metadata"].get("labels", {})
        if not selects(spec["selector"]["matchLabels"], labels):
            fail(where, "selector does not match the pod template's labels")
        pod = tmpl["spec"]
        if "terminationGracePeriodSeconds" not in pod:
            fail(where, "no terminationGracePeriodSeconds")
        claims = {c["metadata"]["name"] for c in spec.get("volumeClaimTemplates", [])}
        vols = {v["name"]: v for v in pod.get("volumes", [])}
        if kind == "StatefulSet":
            sts_names[name] = (spec.get("serviceName"), spec.get("replicas", 1))
            svc = services.get(spec.get("serviceName"))
            if not svc or svc[1]["spec"].get("clusterIP") != "None":
                fail(where, f"serviceName {spec.get('serviceName')} is not a headless Service")
            if not claims:
                fail(where, "no volumeClaimTemplates")
        for c in pod["containers"]:
            cwhere = f"{where} container {c['name']}"
            ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
            env = {}
            for e in c.get("env", []):
                if "value" in e:
                    env[e["name"]] = str(e["value"])
                elif e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "status.podIP":
                    env[e["name"]] = POD_IP
            literal_env = {e["name"]: str(e["value"]) for e in c.get("env", []) if "value" in e}
            for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
                p = c.get(probe)
                if not p or "httpGet" not in p:
                    fail(cwhere, f"no HTTP {probe}")
                    continue
                if p["httpGet"]["path"] != path:
                    fail(cwhere, f"{probe} on {p['httpGet']['path']}, not {path}")
            for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
                p = (c.get(probe) or {}).get("httpGet")
                if p and p["port"] not in ports and p["port"] not in ports.values():
                    fail(cwhere, f"{probe} port {p['port']} is no container port")
                if p and ports.get(p["port"], p["port"]) != ports.get("http"):
                    fail(cwhere, f"{probe} is not on the http port")
            if "resources" not in c:
                fail(cwhere, "no resources")
            for m in c.get("volumeMounts", []):
                if m["name"] not in claims and m["name"] not in vols:
                    fail(cwhere, f"mounts {m['name']}, which is neither a claim nor a volume")
            # The command line(s).
            cmdline = [str(a) for a in c.get("command", [])] + [str(a) for a in c.get("args", [])]
            argvs = []
            if cmdline[:2] == ["sh", "-c"]:
                script = " ".join(cmdline[2:])
                n = spec.get("replicas", 1) if kind == "StatefulSet" else 1
                for i in range(n):
                    s = script.replace("${HOSTNAME##*-}", str(i))
                    s = re.sub(r"\$\(\(\s*([0-9+\s]+)\)\)", lambda m: str(eval(m.group(1))), s)
                    toks = shlex.split(k8s_expand(s, env))
                    if toks[:1] == ["exec"]:
                        toks = toks[1:]
                    if any("$" in t for t in toks):
                        fail(cwhere, f"shell expansion left in {toks}")
                    argvs.append((f"{kind.lower()}/{name}-{i}", toks))
            else:
                argv = (["ringkv"] if not c.get("command") else []) + [k8s_expand(a, env) for a in cmdline]
                if kind == "StatefulSet" and "--id-from-hostname" in argv:
                    # Each pod's id is its ordinal plus one (`placement-0` -> 1).
                    for i in range(spec.get("replicas", 1)):
                        at = argv.index("--id-from-hostname")
                        argvs.append((f"{kind.lower()}/{name}-{i}", argv[:at] + ["--id", str(i + 1)] + argv[at + 1:]))
                else:
                    argvs.append((f"{kind.lower()}/{name}", argv))
            for cname, argv in argvs:
                cfg = flag(argv, "config")
                file_docs, cfiles = [], []
                if cfg:
                    mount = next((m for m in c.get("volumeMounts", []) if cfg.startswith(m["mountPath"].rstrip("/") + "/")), None)
                    vol = vols.get(mount["name"]) if mount else None
                    cm = configmaps.get(((vol or {}).get("configMap") or {}).get("name"))
                    key = cfg[len(mount["mountPath"].rstrip("/")) + 1:] if mount else None
                    if not cm or key not in cm.get("data", {}):
                        fail(cwhere, f"--config {cfg} is not a key of a mounted ConfigMap")
                    else:
                        text = cm["data"][key]
                        cfiles.append({"path": cfg, "from": f"{src}#configmap/{cm['metadata']['name']}/{key}", "text": text})
                role = argv[1] if len(argv) > 1 else None
                cmd = add_command(src, cname, argv, literal_env, cfiles)
                for f in cfiles:
                    file_docs.append(check_toml(f"{cwhere} {f['from']}", role, f["text"], known))
                mark_needs(cmd, file_docs)
                # Ports in the command line are container ports with the right names.
                http = flag(argv, "http") or next((d.get("http_addr") for d in file_docs if d.get("http_addr")), None)
                listen = flag(argv, "listen") or next((d.get("listen_addr") for d in file_docs if d.get("listen_addr")), None)
                for pname, addr in (("http", http), ("grpc", listen)):
                    if not addr:
                        fail(cwhere, f"no {pname} address given (the default is loopback only)")
                        continue
                    host, port = split_hostport(addr)
                    if host.startswith("127."):
                        fail(cwhere, f"{pname} on {addr}: loopback, unreachable from outside the pod")
                    if ports.get(pname) != port:
                        fail(cwhere, f"{pname} port {port} is not the container port {pname}={ports.get(pname)}")
                ann = tmpl["metadata"].get("annotations", {})
                if ann.get("prometheus.io/port") and int(ann["prometheus.io/port"]) != ports.get("http"):
                    fail(where, f"prometheus.io/port {ann['prometheus.io/port']} is not the http port")
                dd = flag(argv, "data-dir") or next((d.get("data_dir") for d in file_docs if d.get("data_dir")), None)
                if role in ("placement", "storenode"):
                    if role == "storenode" and flag(argv, "node-id"):
                        fail(cwhere, "storenodes get their id from placement; no --node-id")
                    mounts = [m["mountPath"] for m in c.get("volumeMounts", []) if m["name"] in claims]
                    if not dd or not any(dd.startswith(mp.rstrip("/") + "/") for mp in mounts):
                        fail(cwhere, f"data dir {dd} is not on a volume claim")
                if role == "placement":
                    mid = int(flag(argv, "id") or 1)
                    placement_members[mid] = (name, argv, cname)
                else:
                    placement_clients.append((cwhere, cmd, file_docs))

    # Services and PDBs select pods that have the ports they name.
    pods = [(w["metadata"]["name"], w["spec"]["template"]) for _, w in workloads]
    for name, (src, s) in services.items():
        sel = s["spec"].get("selector", {})
        matched = [t for _, t in pods if selects(sel, t["metadata"].get("labels", {}))]
        if not matched:
            fail(f"{src} service/{name}", "selects no pod template")
        for p in s["spec"].get("ports", []):
            tp = p.get("targetPort", p["port"])
            for t in matched:
                cports = {pp["name"]: pp["containerPort"] for c in t["spec"]["containers"] for pp in c.get("ports", [])}
                if tp not in cports and tp not in cports.values():
                    fail(f"{src} service/{name}", f"targetPort {tp} is no container port")
                elif cports.get(tp, tp) != p["port"]:
                    fail(f"{src} service/{name}", f"port {p['port']} forwards to {cports.get(tp, tp)}")
    for src, pdb in by_kind.get("PodDisruptionBudget", []):
        sel = pdb["spec"]["selector"]["matchLabels"]
        if not any(selects(sel, t["metadata"].get("labels", {})) for _, t in pods):
            fail(f"{src} pdb/{pdb['metadata']['name']}", "selects no pod template")
    for comp in ROLES:
        if not any(pdb["spec"]["selector"]["matchLabels"].get("app.kubernetes.io/component") == comp
                   for _, pdb in by_kind.get("PodDisruptionBudget", [])):
            fail("deploy/k8s", f"no PodDisruptionBudget for {comp}")

    # Placement: member N is pod <sts>-(N-1) by its stable name, on its grpc port.
    want = {}
    for mid, (sts, argv, cname) in placement_members.items():
        svc_name, replicas = sts_names.get(sts, (None, 0))
        svc = services.get(svc_name)
        grpc = next((p["port"] for p in svc[1]["spec"]["ports"] if p["name"] == "grpc"), None) if svc else None
        want[mid] = f"{sts}-{mid - 1}.{svc_name}:{grpc}"
    if want and sorted(want) != list(range(1, len(want) + 1)):
        fail("deploy/k8s/placement.yaml", f"member ids {sorted(want)} are not 1..N")
    for mid, (sts, argv, cname) in placement_members.items():
        given = {}
        for m in flag_values(argv, "member"):
            i, _, a = m.partition("=")
            given[int(i)] = a
        if given != want:
            fail(f"deploy/k8s {cname}", f"--member {given} is not the pods' stable names {want}")
    for cwhere, cmd, file_docs in placement_clients:
        got = sorted(placement_addrs(cmd, file_docs))
        if got != sorted(want.values()):
            fail(cwhere, f"placement addresses {got} are not the members {sorted(want.values())}")


# --------------------------------------------------------------- systemd ---

def check_systemd(known):
    d = os.path.join(DEPLOY, "systemd")
    addrs = {}
    docs = {}
    for f in sorted(os.listdir(d)):
        if not f.endswith(".service"):
            continue
        src = rel(os.path.join(d, f))
        unit = {}
        for line in read(os.path.join(d, f)).splitlines():
            if "=" in line and not line.startswith("#"):
                k, _, v = line.partition("=")
                unit.setdefault(k.strip(), []).append(v.strip())
        for k, v in (("Restart", "on-failure"), ("User", "ringkv")):
            if unit.get(k) != [v]:
                fail(src, f"{k} is not {v}")
        if "LimitNOFILE" not in unit:
            fail(src, "no LimitNOFILE")
        if unit.get("StateDirectory") != ["ringkv"]:
            fail(src, "StateDirectory is not ringkv (/var/lib/ringkv)")
        argv = shlex.split(unit["ExecStart"][0])
        argv[0] = os.path.basename(argv[0])
        cfg = flag(argv, "config")
        files, doc = [], {}
        if cfg:
            local = os.path.join(d, os.path.basename(cfg))
            if not cfg.startswith("/etc/ringkv/") or not os.path.exists(local):
                fail(src, f"--config {cfg}: no {rel(local)} to install there")
            else:
                text = read(local)
                files.append({"path": cfg, "from": rel(local), "text": text})
                doc = check_toml(rel(local), argv[1], text, known)
        cmd = add_command(src, f"systemd/{f}", argv, {}, files)
        mark_needs(cmd, [doc])
        if cmd["needs"]:
            fail(src, f"relies on {cmd['needs']} that the binary does not accept")
        docs[cmd["role"]] = (cmd, doc)
        dd = flag(argv, "data-dir") or doc.get("data_dir")
        if cmd["role"] != "router" and (not dd or not dd.startswith("/var/lib/ringkv/")):
            fail(src, f"data dir {dd} is not under /var/lib/ringkv")
    if set(docs) != set(ROLES):
        fail("deploy/systemd", f"units for {sorted(docs)}, want {list(ROLES)}")
        return
    pcmd, pdoc = docs["placement"]
    members = dict(m.split("=", 1) for m in pdoc.get("members", []))
    me = members.get(str(pdoc.get("id", 1)))
    if me != pdoc.get("listen"):
        fail("deploy/systemd/placement.toml", f"member {pdoc.get('id')} is {me}, but it listens on {pdoc.get('listen')}")
    for role in ("storenode", "router"):
        cmd, doc = docs[role]
        got = sorted(placement_addrs(cmd, [doc]))
        if got != sorted(members.values()):
            fail(f"deploy/systemd/{role}.toml", f"placement {got} is not the members {sorted(members.values())}")
    # The example addresses of VM 1 use the ports of the README's table.
    readme = read(os.path.join(d, "README.md"))
    expect = {"placement": (pdoc.get("listen"), pdoc.get("http")),
              "storenode": (docs["storenode"][1].get("listen_addr"), docs["storenode"][1].get("http_addr")),
              "router": (docs["router"][1].get("listen"), docs["router"][1].get("http"))}
    for role, (grpc, http) in expect.items():
        row = re.search(rf"^\| {role} \| (\d+) \| (\d+) \|", readme, re.M)
        if not row:
            fail("deploy/systemd/README.md", f"no port row for {role}")
        elif (split_hostport(grpc or ":0")[1], split_hostport(http or ":0")[1]) != (int(row.group(1)), int(row.group(2))):
            fail("deploy/systemd/README.md", f"{role} ports {row.group(1)}/{row.group(2)} differ from {role}.toml ({grpc}, {http})")


# ------------------------------------------------------------------ main ---

def check_binary(binary):
    for c in commands:
        env = dict(os.environ)
        env.update(c["env"])
        r = subprocess.run([binary] + c["argv"][1:] + ["--help"], env=env, capture_output=True, text=True, timeout=30)
        if r.returncode != 0:
            err = (r.stderr.strip().splitlines() or ["?"])[0]
            fail(c["source"], f"{c['name']}: {binary} refuses the command line: {err}")


def main():
    args = sys.argv[1:]
    known = toml_keys()
    check_compose(known)
    check_k8s(known)
    check_systemd(known)
    if "--check-binary" in args:
        i = args.index("--check-binary")
        if i + 1 >= len(args):
            sys.exit("--check-binary needs the path of a ringkv binary")
        check_binary(args[i + 1])
    if "--list-commands" in args:
        for c in commands:
            print(json.dumps(c))
    for f in failures:
        print(f, file=sys.stderr if "--list-commands" in args else sys.stdout)
    if not failures and "--list-commands" not in args:
        print(f"ok: {len(commands)} command lines in compose, k8s and systemd files agree")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
