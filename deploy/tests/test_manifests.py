"""Properties of the rendered Kubernetes manifests (deploy/k8s/overlays/*) and the Grafana
dashboard that a schema check cannot see. Run by scripts/check-deploy.sh:

    .tools/venv/bin/python -m pytest deploy/tests

Each overlay is rendered with `kubectl kustomize` (offline). Only reads the repository.
"""

import ipaddress
import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = ["dev", "prod"]
SERVICES = {"ingest": 8080, "router": 8082, "deliverer": 8083, "query": 8081}
SECRET = "hookrelay-secrets"
# Ranges the deliverer must never reach (SSRF): private, CGNAT, link-local (cloud metadata).
FORBIDDEN = ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "169.254.0.0/16"]
DEFAULT_DRAIN_SECONDS = 20  # HOOKRELAY_DRAIN_TIMEOUT's default in hookrelay-runtime/src/config.rs


def render(overlay):
    out = subprocess.run(
        ["kubectl", "kustomize", str(K8S / "overlays" / overlay)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return [d for d in yaml.safe_load_all(out) if d]


_RENDERED = {}


@pytest.fixture(params=OVERLAYS)
def docs(request):
    if request.param not in _RENDERED:
        _RENDERED[request.param] = render(request.param)
    return _RENDERED[request.param]


def of_kind(docs, kind):
    return [d for d in docs if d["kind"] == kind]


def named(docs, kind, name):
    found = [d for d in of_kind(docs, kind) if d["metadata"]["name"] == name]
    assert found, f"no {kind} {name}"
    return found[0]


def deployments(docs):
    return {d["metadata"]["name"]: d for d in of_kind(docs, "Deployment")}


def parse_duration(s):
    """Seconds in a duration as hookrelay parses it: 250ms, 5s, 2m, 1h, 1d, 1h30m."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
    parts = re.findall(r"(\d+)(ms|s|m|h|d)", s)
    assert parts and "".join(n + u for n, u in parts) == s, f"bad duration {s!r}"
    return sum(int(n) * units[u] for n, u in parts)


def env_of(docs, container):
    """The container's environment as the pod sees it: ConfigMaps from envFrom, then env."""
    env = {}
    for src in container.get("envFrom", []):
        if "configMapRef" in src:
            env.update(named(docs, "ConfigMap", src["configMapRef"]["name"]).get("data", {}))
    for e in container.get("env", []):
        env[e["name"]] = e.get("value", e.get("valueFrom"))
    return env


def matches(selector, labels):
    return all(labels.get(k) == v for k, v in selector["matchLabels"].items())


def pod_labels(workload):
    return workload["spec"]["template"]["metadata"]["labels"]


def assert_hardened(pod_spec, what):
    pod_sc = pod_spec.get("securityContext", {})
    for c in pod_spec["containers"]:
        sc = c.get("securityContext", {})
        assert sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True, f"{what}/{c['name']}: runAsNonRoot"
        assert sc.get("runAsUser", pod_sc.get("runAsUser", 0)) != 0, f"{what}/{c['name']}: runs as uid 0"
        assert sc.get("readOnlyRootFilesystem") is True, f"{what}/{c['name']}: readOnlyRootFilesystem"
        assert sc.get("allowPrivilegeEscalation") is False, f"{what}/{c['name']}: allowPrivilegeEscalation"
        assert "ALL" in sc.get("capabilities", {}).get("drop", []), f"{what}/{c['name']}: capabilities not dropped"
        assert not sc.get("privileged", False), f"{what}/{c['name']}: privileged"
        res = c.get("resources", {})
        for key in ("cpu", "memory"):
            assert key in res.get("requests", {}), f"{what}/{c['name']}: no {key} request"
        assert "memory" in res.get("limits", {}), f"{what}/{c['name']}: no memory limit"


# --- Deployments --------------------------------------------------------------------------


def test_every_service_has_a_deployment(docs):
    assert set(deployments(docs)) == {f"hookrelay-{s}" for s in SERVICES}


def test_deployments_probe_healthz_and_readyz(docs):
    for name, d in deployments(docs).items():
        for c in d["spec"]["template"]["spec"]["containers"]:
            assert c["livenessProbe"]["httpGet"]["path"] == "/healthz", f"{name}: liveness"
            assert c["readinessProbe"]["httpGet"]["path"] == "/readyz", f"{name}: readiness"
            ports = {p["name"]: p["containerPort"] for p in c["ports"]}
            for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
                if probe in c:
                    port = c[probe]["httpGet"]["port"]
                    assert port in ports or port in ports.values(), f"{name}: {probe} port {port} unknown"


def test_deployments_are_hardened_and_sized(docs):
    for name, d in deployments(docs).items():
        assert_hardened(d["spec"]["template"]["spec"], name)


def test_services_listen_on_all_interfaces_at_their_port(docs):
    # The binaries default to 127.0.0.1, which no probe or Service reaches.
    for name, d in deployments(docs).items():
        service = name.removeprefix("hookrelay-")
        (c,) = d["spec"]["template"]["spec"]["containers"]
        assert c["args"] == [service], f"{name}: runs {c['args']}"
        port = SERVICES[service]
        assert env_of(docs, c).get("HOOKRELAY_HTTP_ADDR") == f"0.0.0.0:{port}", f"{name}: HOOKRELAY_HTTP_ADDR"
        assert [p["containerPort"] for p in c["ports"]] == [port], f"{name}: container port"


def test_grace_period_exceeds_drain_deadline(docs):
    for name, d in deployments(docs).items():
        spec = d["spec"]["template"]["spec"]
        grace = spec.get("terminationGracePeriodSeconds", 30)
        for c in spec["containers"]:
            drain = env_of(docs, c).get("HOOKRELAY_DRAIN_TIMEOUT")
            drain_s = parse_duration(drain) if isinstance(drain, str) else DEFAULT_DRAIN_SECONDS
            pre_stop = c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
            assert grace > pre_stop + drain_s, f"{name}: grace {grace}s <= preStop {pre_stop}s + drain {drain_s}s"


def test_secrets_come_from_the_secret(docs):
    needs_admin = {"hookrelay-ingest", "hookrelay-query"}
    for name, d in deployments(docs).items():
        (c,) = d["spec"]["template"]["spec"]["containers"]
        env = {e["name"]: e for e in c.get("env", [])}
        wanted = {"HOOKRELAY_DATABASE_URL"} | ({"HOOKRELAY_ADMIN_TOKEN"} if name in needs_admin else set())
        for var in wanted:
            ref = env.get(var, {}).get("valueFrom", {}).get("secretKeyRef")
            assert ref == {"name": SECRET, "key": var}, f"{name}: {var} not from {SECRET}"
    for cm in of_kind(docs, "ConfigMap"):
        for key in cm.get("data", {}):
            assert "TOKEN" not in key and "DATABASE_URL" not in key, f"secret {key} in ConfigMap"


NATS_SECRET = "hookrelay-nats"
NATS_CONF = ROOT / "deploy" / "nats" / "nats.conf"


def test_each_service_connects_to_nats_as_its_own_user(docs):
    # deploy/nats/nats.conf gives each service a user with only the permissions it needs.
    users = set(re.findall(r"^\s*user:\s*(\S+)", NATS_CONF.read_text(), re.M))
    for name, d in deployments(docs).items():
        (c,) = d["spec"]["template"]["spec"]["containers"]
        env = {e["name"]: e for e in c.get("env", [])}
        user = name.removeprefix("hookrelay-")
        assert env["HOOKRELAY_NATS_USER"]["value"] == user and user in users, name
        ref = env["HOOKRELAY_NATS_PASSWORD"]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": NATS_SECRET, "key": f"HOOKRELAY_NATS_{user.upper()}_PASSWORD"}, name
    job = env_of(docs, named(docs, "Job", "hookrelay-migrate")["spec"]["template"]["spec"]["containers"][0])
    assert "HOOKRELAY_NATS_USER" in job and "HOOKRELAY_NATS_PASSWORD" in job


def test_the_encryption_key_reaches_only_query_and_the_deliverer(docs):
    for name, d in deployments(docs).items():
        (c,) = d["spec"]["template"]["spec"]["containers"]
        env = {e["name"]: e for e in c.get("env", [])}
        if name in {"hookrelay-query", "hookrelay-deliverer"}:
            ref = env["HOOKRELAY_ENCRYPTION_KEY"]["valueFrom"]["secretKeyRef"]
            assert ref == {"name": SECRET, "key": "HOOKRELAY_ENCRYPTION_KEY"}, name
        else:
            assert "HOOKRELAY_ENCRYPTION_KEY" not in env, f"{name} holds the encryption key"


def test_nats_runs_hookrelays_nats_conf_with_every_password(docs):
    (included,) = [c for c in of_kind(docs, "ConfigMap") if c["metadata"]["name"].startswith("nats-hookrelay")]
    assert included["data"]["hookrelay.conf"] == NATS_CONF.read_text()
    assert "include ./hookrelay.conf" in named(docs, "ConfigMap", "nats-config")["data"]["nats.conf"]
    pod = named(docs, "StatefulSet", "nats")["spec"]["template"]["spec"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == "config"]
    sources = {s["configMap"]["name"] for s in volume["projected"]["sources"]}
    assert included["metadata"]["name"] in sources and "nats-config" in sources
    assert {"secretRef": {"name": NATS_SECRET}} in pod["containers"][0]["envFrom"]
    wanted = set(re.findall(r"\$(HOOKRELAY_NATS_\w+_PASSWORD)", NATS_CONF.read_text()))
    placeholders = [s for s in of_kind(docs, "Secret") if s["metadata"]["name"] == NATS_SECRET]
    # prod's Secret is made outside git (deploy/README.md shows how, with every password).
    assert wanted and all(wanted == set(secret["stringData"]) for secret in placeholders)


def test_config_map_names_only_known_variables(docs):
    # A misspelt variable is silently ignored by the services: every key must occur in the code.
    source = "\n".join(p.read_text() for p in (ROOT / "crates").rglob("*.rs"))
    cm = named(docs, "ConfigMap", "hookrelay-config")
    for key in cm["data"]:
        if key == "RUST_LOG":  # read by tracing-subscriber's EnvFilter
            continue
        if key.startswith("MIMALLOC_"):  # read by the allocator (hookrelay-runtime's lib.rs)
            continue
        assert f'"{key}"' in source, f"ConfigMap key {key} is not read by any service"


def test_the_allocator_gives_memory_back(docs):
    # Without these, mimalloc keeps what a burst allocated: a deliverer peaked at ~100 MB
    # against the 100 MB budget per service (docs/benchmarks.md).
    cm = named(docs, "ConfigMap", "hookrelay-config")
    assert cm["data"]["MIMALLOC_ARENA_EAGER_COMMIT"] == "0"
    assert cm["data"]["MIMALLOC_PURGE_DELAY"] == "0"
    for name, d in deployments(docs).items():
        (c,) = d["spec"]["template"]["spec"]["containers"]
        assert any(src.get("configMapRef", {}).get("name") == "hookrelay-config" for src in c.get("envFrom", [])), name


# --- Autoscaling, disruption budgets, Services, migration Job -----------------------------


def test_hpas_scale_ingest_and_deliverer(docs):
    deps = deployments(docs)
    targets = {h["spec"]["scaleTargetRef"]["name"]: h for h in of_kind(docs, "HorizontalPodAutoscaler")}
    assert {"hookrelay-ingest", "hookrelay-deliverer"} <= set(targets)
    for name, hpa in targets.items():
        assert name in deps, f"HPA targets missing Deployment {name}"
        assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
        # A fixed replica count would fight the autoscaler on every apply.
        assert "replicas" not in deps[name]["spec"], f"{name}: replicas set although an HPA owns it"


def test_every_deployment_has_a_pdb(docs):
    pdbs = of_kind(docs, "PodDisruptionBudget")
    for name, d in deployments(docs).items():
        assert any(matches(p["spec"]["selector"], pod_labels(d)) for p in pdbs), f"{name}: no PDB"


def test_services_for_ingest_and_query(docs):
    deps = deployments(docs)
    for svc in ("ingest", "query"):
        s = named(docs, "Service", f"hookrelay-{svc}")
        assert matches({"matchLabels": s["spec"]["selector"]}, pod_labels(deps[f"hookrelay-{svc}"]))
        (c,) = deps[f"hookrelay-{svc}"]["spec"]["template"]["spec"]["containers"]
        names = {p["name"] for p in c["ports"]}
        assert all(p["targetPort"] in names for p in s["spec"]["ports"]), f"{svc}: Service targetPort"


def test_migration_job(docs):
    job = named(docs, "Job", "hookrelay-migrate")
    spec = job["spec"]["template"]["spec"]
    (c,) = spec["containers"]
    assert c["args"] == ["migrate"]
    assert c["image"] == deployments(docs)["hookrelay-ingest"]["spec"]["template"]["spec"]["containers"][0]["image"]
    env = env_of(docs, c)
    assert "HOOKRELAY_NATS_URL" in env and "HOOKRELAY_DATABASE_URL" in env
    assert_hardened(spec, "hookrelay-migrate")


# --- The deliverer's NetworkPolicy --------------------------------------------------------


def deliverer_policy(docs):
    pods = pod_labels(deployments(docs)["hookrelay-deliverer"])
    pols = [p for p in of_kind(docs, "NetworkPolicy") if matches(p["spec"]["podSelector"], pods)]
    assert len(pols) == 1, "exactly one NetworkPolicy must select the deliverer"
    return pols[0]


def test_deliverer_egress_excludes_private_ranges(docs):
    pol = deliverer_policy(docs)
    assert "Egress" in pol["spec"]["policyTypes"]
    blocks = [peer["ipBlock"] for rule in pol["spec"]["egress"] for peer in rule.get("to", []) if "ipBlock" in peer]
    assert any(b["cidr"] == "0.0.0.0/0" for b in blocks), "no internet egress for the deliverer"
    for b in blocks:
        allowed = ipaddress.ip_network(b["cidr"])
        excepted = [ipaddress.ip_network(e) for e in b.get("except", [])]
        for bad in map(ipaddress.ip_network, FORBIDDEN):
            if allowed.version == bad.version and allowed.overlaps(bad):
                assert any(bad.subnet_of(e) for e in excepted), f"{b['cidr']} lets the deliverer reach {bad}"


def test_deliverer_egress_reaches_nats_postgres_and_dns(docs):
    pol = deliverer_policy(docs)
    ports = {}
    for rule in pol["spec"]["egress"]:
        if any("podSelector" in peer for peer in rule.get("to", [])):
            for p in rule.get("ports", []):
                ports.setdefault(p["port"], set()).add(p.get("protocol", "TCP"))
    assert 4222 in ports, "no egress to NATS"
    assert 5432 in ports, "no egress to PostgreSQL"
    assert {"UDP", "TCP"} <= ports.get(53, set()), "no egress to DNS"


def test_deliverer_peers_select_the_databases_in_dev():
    docs = _RENDERED.get("dev") or render("dev")
    pol = deliverer_policy(docs)
    peers = [
        peer["podSelector"]
        for rule in pol["spec"]["egress"]
        for peer in rule.get("to", [])
        if "podSelector" in peer and "namespaceSelector" not in peer
    ]
    for sts in of_kind(docs, "StatefulSet"):
        assert any(matches(sel, pod_labels(sts)) for sel in peers), (
            f"the deliverer's NetworkPolicy does not reach StatefulSet {sts['metadata']['name']}"
        )


# --- Overlay specifics --------------------------------------------------------------------


def test_both_overlays_run_a_three_server_nats_jetstream_cluster(docs):
    nats = named(docs, "StatefulSet", "nats")
    assert nats["spec"]["replicas"] == 3
    assert nats["spec"]["volumeClaimTemplates"], "NATS without a volume"
    conf = named(docs, "ConfigMap", "nats-config")["data"]["nats.conf"]
    assert re.search(r"sync_interval:\s*always", conf), "JetStream must fsync every write"
    assert re.search(r"store_dir:\s*/data", conf)
    routes = re.findall(r"nats://nats-(\d)\.nats-headless:6222", conf)
    assert sorted(routes) == ["0", "1", "2"], "every server routes to the three"
    spread = nats["spec"]["template"]["spec"]["topologySpreadConstraints"]
    assert any(c["topologyKey"] == "kubernetes.io/hostname" and c["whenUnsatisfiable"] == "DoNotSchedule" for c in spread), (
        "two servers on one node would lose two copies of a stream with it"
    )
    containers = {c["name"]: c for c in nats["spec"]["template"]["spec"]["containers"]}
    assert "exporter" in containers, "consumer lag needs the NATS exporter"
    assert named(docs, "PodDisruptionBudget", "nats")["spec"]["maxUnavailable"] == 1


def test_dev_runs_postgres():
    docs = _RENDERED.get("dev") or render("dev")
    assert named(docs, "StatefulSet", "postgres")["spec"]["replicas"] == 1
    secret = named(docs, "Secret", SECRET)
    assert {"HOOKRELAY_ADMIN_TOKEN", "HOOKRELAY_DATABASE_URL"} <= set(secret["stringData"])
    assert "REPLACE_ME" not in json.dumps(secret)


def test_prod_sizes_nats_and_keeps_postgres_and_secrets_out():
    docs = _RENDERED.get("prod") or render("prod")
    assert {s["metadata"]["name"] for s in of_kind(docs, "StatefulSet")} == {"nats"}, (
        "prod runs PostgreSQL through an operator"
    )
    assert not [s for s in of_kind(docs, "Secret") if s["metadata"]["name"] in {SECRET, NATS_SECRET}], (
        "prod must not apply the placeholder Secrets over the real ones"
    )
    nats = named(docs, "StatefulSet", "nats")
    (claim,) = nats["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "50Gi"
    (server,) = [c for c in nats["spec"]["template"]["spec"]["containers"] if c["name"] == "nats"]
    assert server["resources"]["requests"]["memory"] == "2Gi"
    streams = named(docs, "ConfigMap", "hookrelay-config")["data"]["HOOKRELAY_STREAM_REPLICAS"]
    assert int(streams) == 3, "prod streams keep three copies on the three NATS servers"
    for d in of_kind(docs, "Deployment"):
        image = d["spec"]["template"]["spec"]["containers"][0]["image"]
        assert "/" in image and not image.endswith(":latest"), f"prod image {image}: registry and tag"


# --- Grafana dashboard --------------------------------------------------------------------


def test_dashboard_queries_only_metrics_the_code_exports():
    dash = json.loads((ROOT / "deploy" / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", []) if "expr" in t]
    assert exprs, "dashboard without queries"
    source = "\n".join(p.read_text() for p in (ROOT / "crates").rglob("*.rs"))
    used = {m for e in exprs for m in re.findall(r"\bhookrelay_[a-z0-9_]+", e)}
    assert used, "dashboard queries no hookrelay metric"
    for metric in used:
        base = re.sub(r"_(bucket|sum|count)$", "", metric)
        assert f'"{base}"' in source, f"dashboard uses {metric}, which no service exports"
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)), "duplicate panel ids"


# --- Image --------------------------------------------------------------------------------


def test_dockerfile_builds_every_binary_and_runs_unprivileged():
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    # Binaries: packages with src/main.rs (name = package name) and explicit [[bin]] targets.
    binaries = set()
    for manifest in (ROOT / "crates").glob("*/Cargo.toml"):
        text = manifest.read_text()
        if (manifest.parent / "src" / "main.rs").exists():
            binaries.add(re.search(r'^name = "([^"]+)"', text, re.M).group(1))
        binaries |= set(re.findall(r'\[\[bin\]\]\s*\nname = "([^"]+)"', text))
    assert binaries, "no binaries found"
    for b in binaries:
        assert f"--bin {b} " in dockerfile or f"--bin {b}\n" in dockerfile, f"Dockerfile does not build {b}"
        assert f"target/release/{b} " in dockerfile, f"Dockerfile does not copy {b}"
    assert re.search(r"^USER 10001(:10001)?$", dockerfile, re.M), "image must run as uid 10001"
    assert 'ENTRYPOINT ["/usr/local/bin/hookrelay"]' in dockerfile


def test_the_postgres_example_leaves_room_for_every_pod_at_full_scale():
    cluster = yaml.safe_load((K8S / "overlays" / "prod" / "cloudnative-pg-cluster.example.yaml").read_text())
    assert cluster["kind"] == "Cluster" and cluster["spec"]["instances"] >= 3
    params = cluster["spec"]["postgresql"]["parameters"]
    assert params["autovacuum"] == "on", "hookrelay counts on autovacuum"
    docs = _RENDERED.get("prod") or render("prod")
    pods = sum(named(docs, "HorizontalPodAutoscaler", d)["spec"]["maxReplicas"] for d in ("hookrelay-ingest", "hookrelay-deliverer"))
    pods += sum(d["spec"].get("replicas", 1) for d in of_kind(docs, "Deployment") if d["metadata"]["name"] in ("hookrelay-router", "hookrelay-query"))
    pool = int(re.search(r"max_connections\((\d+)\)", (ROOT / "crates/hookrelay-runtime/src/db.rs").read_text()).group(1))
    assert int(params["max_connections"]) >= pods * pool, f"{pods} pods x {pool} connections"


def test_nats_is_recent_enough(docs):
    image = named(docs, "StatefulSet", "nats")["spec"]["template"]["spec"]["containers"][0]["image"]
    major, minor = map(int, re.match(r"nats:(\d+)\.(\d+)", image).groups())
    assert (major, minor) >= (2, 10), f"{image}: sync_interval needs NATS 2.10+"
