"""Static checks of the compose stack in compose/ (no Docker engine runs here).

docker-compose.yml is validated against the Compose Specification JSON Schema kept
in tests/data/compose-spec/ (Apache-2.0, see tests/data/README.md). The Prometheus rule
files are checked by the real `promtool` from the Debian prometheus package that
`make test` installs. Grafana provisioning is parsed and its data-source uids
cross-checked, including the escaping Grafana needs for literal ${...} variables.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_DIR = ROOT / "compose"
COMPOSE_FILE = COMPOSE_DIR / "docker-compose.yml"
SCHEMA = Path(__file__).resolve().parent / "data" / "compose-spec" / "compose-spec.json"
GRAFANA = COMPOSE_DIR / "grafana"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def datasources() -> list[dict]:
    return yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "datasources.yaml").read_text())["datasources"]


def _grafana_unescape(text: str) -> str:
    """What Grafana does to provisioning values: $$ is a literal $, and $VAR / ${VAR}
    are replaced from its environment (empty here, as in the container)."""
    out = re.sub(r"\$\$|\$\{[A-Za-z_][A-Za-z0-9_.]*\}|\$[A-Za-z_][A-Za-z0-9_]*",
                 lambda m: "$" if m.group(0) == "$$" else "", text)
    return out


def _walk_strings(node):
    if isinstance(node, dict):
        for v in node.values():
            yield from _walk_strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from _walk_strings(v)
    elif isinstance(node, str):
        yield node


# --- docker-compose.yml ------------------------------------------------------------

def test_compose_validates_against_compose_spec(compose):
    import jsonschema

    if not SCHEMA.is_file():
        pytest.fail(f"Compose JSON Schema not found at {SCHEMA}: it is part of the repository "
                    "(tests/data/compose-spec); is the checkout complete?")
    schema = json.loads(SCHEMA.read_text())
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(compose), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors[:10])


def test_schema_catches_a_broken_file(compose):
    import jsonschema

    bad = json.loads(json.dumps(compose))
    bad["services"]["tempo"]["depends_on"] = 5
    bad["services"]["tempo"]["bogus_key"] = 1
    errors = list(jsonschema.Draft7Validator(json.loads(SCHEMA.read_text())).iter_errors(bad))
    assert len(errors) >= 2


def _bind_sources(svc: dict) -> list[str]:
    out = []
    for vol in svc.get("volumes", []):
        if isinstance(vol, dict):
            if vol.get("type") == "bind":
                out.append(vol["source"])
            continue
        src = vol.split(":", 1)[0]
        if src.startswith((".", "/", "~")):
            out.append(src)
    return out


def test_every_mounted_file_exists(compose):
    named = set(compose.get("volumes", {}))
    for name, svc in compose["services"].items():
        for src in _bind_sources(svc):
            assert (COMPOSE_DIR / src).exists(), f"{name}: mounted path {src} does not exist"
        for vol in svc.get("volumes", []):
            if isinstance(vol, str) and not vol.startswith((".", "/", "~")):
                assert vol.split(":", 1)[0] in named, f"{name}: named volume {vol} is not declared"
        build = svc.get("build")
        if build:
            ctx = COMPOSE_DIR / build["context"]
            assert ctx.is_dir(), f"{name}: build context {ctx}"
            assert (ctx / build["dockerfile"]).is_file(), f"{name}: Dockerfile {build['dockerfile']}"


def test_dockerfile_copies_exist():
    dockerfile = COMPOSE_DIR / "demo" / "Dockerfile"
    for line in dockerfile.read_text().splitlines():
        if line.startswith("COPY "):
            for src in line.split()[1:-1]:
                assert (ROOT / src).exists(), f"Dockerfile copies missing {src}"


def _published(svc: dict) -> list[tuple[str, int, str]]:
    out = []
    for p in svc.get("ports", []):
        if isinstance(p, dict):
            out.append((p.get("host_ip", "0.0.0.0"), int(p["published"]), p.get("protocol", "tcp")))
            continue
        spec, _, proto = str(p).partition("/")
        parts = spec.split(":")
        assert len(parts) == 3, f"port {p!r} must name the host ip (bind 127.0.0.1)"
        out.append((parts[0], int(parts[1]), proto or "tcp"))
    return out


def test_ports_do_not_collide_and_bind_loopback(compose):
    seen: dict[tuple[int, str], str] = {}
    for name, svc in compose["services"].items():
        for ip, port, proto in _published(svc):
            assert ip == "127.0.0.1", f"{name} publishes {port} on {ip}: bind 127.0.0.1"
            assert (port, proto) not in seen, f"host port {port}/{proto}: {seen[(port, proto)]} and {name}"
            seen[(port, proto)] = name
    assert len(seen) >= 8


def test_images_pinned_healthchecks_limits(compose):
    required = {"otel/opentelemetry-collector-contrib", "grafana/tempo", "grafana/loki",
                "prom/prometheus", "grafana/grafana"}
    found = set()
    for name, svc in compose["services"].items():
        image = svc.get("image", "")
        repo, _, tag = image.rpartition(":")
        assert tag and tag != "latest" and re.match(r"v?\d+\.\d+\.\d+$", tag) or svc.get("build"), \
            f"{name}: image {image!r} is not pinned"
        found.add(repo)
        limits = svc.get("deploy", {}).get("resources", {}).get("limits", {})
        assert limits.get("memory") and limits.get("cpus"), f"{name}: no resource limits"
        if svc.get("restart") != "no":
            assert "healthcheck" in svc and svc["healthcheck"]["test"], f"{name}: no health check"
        for dep, cond in (svc.get("depends_on") or {}).items():
            assert dep in compose["services"], f"{name} depends on unknown {dep}"
            if cond.get("condition") == "service_healthy":
                assert "healthcheck" in compose["services"][dep], f"{name} waits for {dep} health, which has none"
    assert required <= found, required - found


def test_demo_and_load_generator_services(compose):
    services = compose["services"]
    for name in ("fraud-api", "fraud-api-canary", "feature-store", "loadgen"):
        assert name in services, name
    for name in ("fraud-api", "fraud-api-canary", "feature-store"):
        env = services[name]["environment"]
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otelcol:4317"
        assert services[name]["command"][:2] == ["opentelemetry-instrument", "uvicorn"]
    assert services["fraud-api"]["environment"]["FRAUD_MODEL_VERSION"] == "v1"
    assert services["fraud-api-canary"]["environment"]["FRAUD_MODEL_VERSION"] == "v2"
    assert services["loadgen"]["environment"]["LOADGEN_OTLP_HTTP_ENDPOINT"] == "http://otelcol:4318"


def test_demo_services_match_the_demo_code(compose):
    """The compose stack runs the code of stagetrace.demo: same uvicorn targets, the
    same zero-code stage wiring (the demo's [tool.stagetrace] file) and service names
    as `stagetrace demo`."""
    import ast
    import importlib

    runner = importlib.import_module("stagetrace.demo.runner")
    services = compose["services"]
    for name in ("fraud-api", "fraud-api-canary", "feature-store"):
        target = services[name]["command"][2]
        module, _, attr = target.partition(":")
        path = ROOT / "demo" / (module.rsplit(".", 1)[1] + ".py")
        assert module.startswith("stagetrace.demo.") and path.is_file(), target
        tree = ast.parse(path.read_text())
        assert any(isinstance(n, ast.Assign) and any(getattr(t, "id", None) == attr for t in n.targets)
                   for n in tree.body), f"{target}: no top-level {attr}"
        env = services[name]["environment"]
        mounts = {v.split(":")[1]: v.split(":")[0] for v in services[name]["volumes"]}
        assert (COMPOSE_DIR / mounts[env["STAGETRACE_CONFIG"]]).resolve() == runner.STAGES_CONFIG.resolve()
        assert "STAGETRACE_STAGES" not in env  # one source of stage wiring, as in the demo
        assert env["OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST"] == runner.CAPTURED_HEADERS
    assert services["fraud-api"]["environment"]["OTEL_SERVICE_NAME"] == runner.API_SERVICE
    assert services["feature-store"]["environment"]["OTEL_SERVICE_NAME"] == runner.FEATURE_SERVICE
    # The load generator script imports only what the demo package provides.
    script = COMPOSE_DIR / "demo" / "loadgen.py"
    mounts = {v.split(":")[1]: v.split(":")[0] for v in services["loadgen"]["volumes"]}
    assert (COMPOSE_DIR / mounts[services["loadgen"]["command"][1]]).resolve() == script
    for node in ast.walk(ast.parse(script.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module.startswith("stagetrace."):
            mod = importlib.import_module(node.module)
            for alias in node.names:
                assert hasattr(mod, alias.name), f"{node.module}.{alias.name}"


def test_collector_service_uses_the_repo_config(compose):
    col = compose["services"]["otelcol"]
    assert col["image"].startswith("otel/opentelemetry-collector-contrib:")
    mounted = {v.split(":")[1]: v.split(":")[0] for v in col["volumes"]}
    cfg_arg = next(a for a in col["command"] if a.startswith("--config="))
    src = mounted[cfg_arg.split("=", 1)[1]]
    assert (COMPOSE_DIR / src).resolve() == ROOT / "collector" / "otelcol" / "otelcol-gateway.yaml"
    env = col["environment"]
    # The endpoints name services of this file.
    for var in ("TEMPO_OTLP_ENDPOINT", "LOKI_OTLP_ENDPOINT", "PROMETHEUS_REMOTE_WRITE_ENDPOINT"):
        host = re.sub(r"^https?://", "", env[var]).split(":")[0]
        assert host in compose["services"], (var, host)
    assert env["LOKI_OTLP_ENDPOINT"].endswith("/otlp")


# --- Tempo, Loki, Prometheus, Alertmanager configs ---------------------------------

def test_tempo_config():
    cfg = yaml.safe_load((COMPOSE_DIR / "tempo" / "tempo.yaml").read_text())
    otlp = cfg["distributor"]["receivers"]["otlp"]["protocols"]
    assert otlp["grpc"]["endpoint"].endswith(":4317") and otlp["http"]["endpoint"].endswith(":4318")
    assert cfg["storage"]["trace"]["backend"] == "local"
    gen = cfg["metrics_generator"]
    rw = gen["storage"]["remote_write"][0]
    assert rw["url"] == "http://prometheus:9090/api/v1/write" and rw["send_exemplars"] is True
    procs = cfg["overrides"]["defaults"]["metrics_generator"]["processors"]
    assert {"service-graphs", "span-metrics"} <= set(procs)
    assert "ml.stage" in gen["processor"]["span_metrics"]["dimensions"]


def test_loki_config():
    cfg = yaml.safe_load((COMPOSE_DIR / "loki" / "loki.yaml").read_text())
    schema = cfg["schema_config"]["configs"][-1]
    assert (schema["store"], schema["schema"]) == ("tsdb", "v13")
    limits = cfg["limits_config"]
    assert limits["allow_structured_metadata"] is True
    moved = [a for rule in limits["otlp_config"]["resource_attributes"]["attributes_config"]
             if rule["action"] == "structured_metadata" for a in rule["attributes"]]
    assert {"service.instance.id", "k8s.pod.name"} <= set(moved)
    assert not any(rule["action"] == "index_label" and "trace_id" in rule.get("attributes", [])
                   for rule in limits["otlp_config"]["resource_attributes"]["attributes_config"])
    assert cfg["ruler"]["alertmanager_url"] == "http://alertmanager:9093"
    rules_dir = cfg["ruler"]["storage"]["local"]["directory"]
    compose = yaml.safe_load(COMPOSE_FILE.read_text())
    mounts = {v.split(":")[1]: v.split(":")[0] for v in compose["services"]["loki"]["volumes"]}
    assert rules_dir in mounts, "the Loki rules directory is not mounted"
    # auth_enabled: false -> tenant "fake"
    groups = yaml.safe_load((COMPOSE_DIR / mounts[rules_dir] / "fake" / "stagetrace-logs.yaml").read_text())["groups"]
    rules = [r for g in groups for r in g["rules"]]
    assert any(r["alert"] == "NewErrorTemplatesBurst" for r in rules)
    for r in rules:
        assert r["labels"]["severity"] in ("info", "warning", "critical")
        assert "{service_name=" in r["expr"] and "severity_text" in r["expr"]


def _promtool() -> str:
    exe = shutil.which("promtool") or ("/usr/bin/promtool" if Path("/usr/bin/promtool").exists() else None)
    if not exe:
        pytest.fail("promtool not found: install the Debian package `prometheus` (make test does)")
    return exe


def test_prometheus_config_and_rules_pass_promtool(tmp_path):
    exe = _promtool()
    rules = sorted((COMPOSE_DIR / "prometheus" / "rules").glob("*.yml"))
    assert rules
    out = subprocess.run([exe, "check", "rules", *map(str, rules)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    cfg = yaml.safe_load((COMPOSE_DIR / "prometheus" / "prometheus.yml").read_text())
    assert cfg["rule_files"] == ["/etc/prometheus/rules/*.yml"]
    # The Debian promtool (2.42) predates the `otlp:` block of Prometheus 3; check the rest.
    cfg.pop("otlp", None)
    cfg["rule_files"] = [str(COMPOSE_DIR / "prometheus" / "rules" / "*.yml")]
    p = tmp_path / "prometheus.yml"
    p.write_text(yaml.safe_dump(cfg))
    out = subprocess.run([exe, "check", "config", str(p)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_alert_rules_fire_as_intended():
    """`promtool test rules`: given span-metric series, the error-rate and p95 alerts fire
    with the right severity, labels and text, and not before their `for:` period."""
    exe = _promtool()
    tests = sorted((COMPOSE_DIR / "prometheus" / "tests").glob("*_test.yml"))
    assert tests
    out = subprocess.run([exe, "test", "rules", *map(str, tests)], capture_output=True, text=True, timeout=120,
                         cwd=COMPOSE_DIR / "prometheus" / "tests")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]


def test_prometheus_flags_and_alert_rules(compose):
    cmd = compose["services"]["prometheus"]["command"]
    assert "--web.enable-remote-write-receiver" in cmd
    assert "--enable-feature=exemplar-storage" in cmd
    groups = yaml.safe_load((COMPOSE_DIR / "prometheus" / "rules" / "stagetrace-ml.yml").read_text())["groups"]
    alerts = [r for g in groups for r in g["rules"] if "alert" in r]
    names = {a["alert"] for a in alerts}
    assert {"MLStageErrorRateHigh", "MLStageLatencyP95High"} <= names
    for a in alerts:
        assert a["labels"]["severity"] in ("info", "warning", "critical"), a["alert"]
        assert a["annotations"]["summary"]
    # Both severities of one alert share its name so Alertmanager groups/inhibits them.
    assert {a["labels"]["severity"] for a in alerts if a["alert"] == "MLStageErrorRateHigh"} == {"warning", "critical"}
    text = (COMPOSE_DIR / "prometheus" / "rules" / "stagetrace-ml.yml").read_text()
    assert "traces_span_metrics_calls_total" in text and "traces_span_metrics_duration_seconds_bucket" in text
    assert not re.search(r"(?<![a-z_])(calls_total|duration_bucket|latency_bucket)\b", text), "pre-v0.109 span metric names"


def test_alertmanager_groups_and_inhibits():
    cfg = yaml.safe_load((COMPOSE_DIR / "alertmanager" / "alertmanager.yml").read_text())
    assert {"alertname", "service_name", "ml_stage"} <= set(cfg["route"]["group_by"])
    inhibit = cfg["inhibit_rules"][0]
    assert inhibit["source_matchers"] == ['severity="critical"'] and "alertname" in inhibit["equal"]
    assert {r["name"] for r in cfg["receivers"]} >= {cfg["route"]["receiver"]}


# --- Grafana provisioning ------------------------------------------------------------

def test_datasources_and_correlations(datasources):
    by_uid = {d["uid"]: d for d in datasources}
    assert {"prometheus", "tempo", "loki"} <= set(by_uid)
    assert {d["type"] for d in datasources} >= {"prometheus", "tempo", "loki"}
    compose = yaml.safe_load(COMPOSE_FILE.read_text())
    for d in datasources:
        host = re.sub(r"^https?://", "", d["url"]).split(":")[0]
        assert host in compose["services"], (d["name"], d["url"])
    # Every datasourceUid anywhere points at a provisioned data source.
    def uids(node):
        if isinstance(node, dict):
            for k, v in node.items():
                if k == "datasourceUid":
                    yield v
                else:
                    yield from uids(v)
        elif isinstance(node, list):
            for v in node:
                yield from uids(v)
    refs = list(uids(datasources))
    assert refs and set(refs) <= set(by_uid), set(refs) - set(by_uid)

    tempo = by_uid["tempo"]["jsonData"]
    t2l = tempo["tracesToLogsV2"]
    assert t2l["datasourceUid"] == "loki" and t2l["customQuery"] is True
    query = _grafana_unescape(t2l["query"])
    # Structured-metadata filter on trace_id, not a line filter.
    assert '| trace_id="${__trace.traceId}"' in query
    assert "|=" not in query
    assert tempo["tracesToMetrics"]["datasourceUid"] == "prometheus"
    assert all("traces_span_metrics_" in q["query"] for q in tempo["tracesToMetrics"]["queries"])
    assert all("{$__tags" in _grafana_unescape(q["query"]) for q in tempo["tracesToMetrics"]["queries"])
    assert tempo["serviceMap"]["datasourceUid"] == "prometheus"
    derived = by_uid["loki"]["jsonData"]["derivedFields"][0]
    assert derived["datasourceUid"] == "tempo" and derived["matcherRegex"] == "trace_id"
    assert derived["matcherType"] == "label"  # trace_id is structured metadata, not in the line
    assert _grafana_unescape(derived["url"]) == "${__value.raw}"
    ex = by_uid["prometheus"]["jsonData"]["exemplarTraceIdDestinations"][0]
    assert ex["datasourceUid"] == "tempo" and ex["name"] == "trace_id"


def test_grafana_variables_are_escaped(datasources):
    # A single-dollar ${__trace.traceId} would be replaced by Grafana's (empty) env var.
    for s in _walk_strings(datasources):
        assert not re.search(r"(?<!\$)\$\{?__", s), f"unescaped Grafana variable in {s!r}"


def test_escape_check_can_fail():
    assert _grafana_unescape('| trace_id="${__trace.traceId}"') == '| trace_id=""'


def test_dashboards_provisioned_and_reference_known_uids(datasources):
    prov = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "dashboards.yaml").read_text())
    path = prov["providers"][0]["options"]["path"]
    compose = yaml.safe_load(COMPOSE_FILE.read_text())
    mounts = {v.split(":")[1]: v.split(":")[0] for v in compose["services"]["grafana"]["volumes"]}
    assert path in mounts
    files = sorted((COMPOSE_DIR / mounts[path]).glob("*.json"))
    assert files
    known = {d["uid"] for d in datasources}
    for f in files:
        dash = json.loads(f.read_text())
        assert dash["uid"] and dash["title"]
        refs = [v for v in _dash_uids(dash)]
        assert refs and set(refs) <= known, (f.name, set(refs) - known)
    red = json.loads((COMPOSE_DIR / mounts[path] / "stagetrace-ml-red.json").read_text())
    names = {v["name"] for v in red["templating"]["list"]}
    assert {"stage", "model_version"} <= names
    assert any(p.get("repeat") == "stage" for p in red["panels"])
    exprs = " ".join(t.get("expr", "") for p in red["panels"] for t in p.get("targets", []))
    assert "traces_span_metrics_calls_total" in exprs and "traces_span_metrics_duration_seconds_bucket" in exprs
    assert "ml_model_version" in exprs and 'status_code="STATUS_CODE_ERROR"' in exprs
    assert any(t.get("exemplar") for p in red["panels"] for t in p.get("targets", []))


def _dash_uids(node):
    if isinstance(node, dict):
        ds = node.get("datasource")
        if isinstance(ds, dict) and "uid" in ds:
            yield ds["uid"]
        for v in node.values():
            yield from _dash_uids(v)
    elif isinstance(node, list):
        for v in node:
            yield from _dash_uids(v)


_GRAFANA_VARS = {"$__rate_interval": "1m", "$__interval": "1m", "$service": "fraud-api", "$stage": "inference",
                 "$model_version": ".*", "$__tags": 'service_name="fraud-api", ml_stage="inference"'}


def _promql_of_grafana(expr: str) -> str:
    for var, value in sorted(_GRAFANA_VARS.items(), key=lambda kv: -len(kv[0])):
        expr = expr.replace(var, value)
    assert "$" not in expr, f"unsubstituted Grafana variable in {expr!r}"
    return expr


def test_dashboard_and_correlation_promql_parses(datasources, tmp_path):
    """Every PromQL in the dashboards, the trace-to-metrics links and the alert annotation
    query, with Grafana's variables filled in, is parsed by the real promtool."""
    exprs = []
    for f in sorted((GRAFANA / "dashboards").glob("*.json")):
        dash = json.loads(f.read_text())
        for p in dash["panels"]:
            for t in p.get("targets", []):
                if t.get("datasource", {}).get("uid") == "prometheus":
                    exprs.append(t["expr"])
        exprs += [a["expr"] for a in dash.get("annotations", {}).get("list", []) if "expr" in a]
        exprs += [v["query"]["query"].replace("label_values(", "count by (x) (").rsplit(",", 1)[0] + ")"
                  for v in dash["templating"]["list"]]
    tempo = next(d for d in datasources if d["uid"] == "tempo")
    # Grafana's own unescaping turns $$__tags back into $__tags (the span's tags as matchers).
    exprs += [_grafana_unescape(q["query"]) for q in tempo["jsonData"]["tracesToMetrics"]["queries"]]
    assert len(exprs) >= 10
    rules = {"groups": [{"name": "grafana-queries", "rules": [
        {"record": f"grafana:query_{i}", "expr": _promql_of_grafana(e)} for i, e in enumerate(exprs)]}]}
    path = tmp_path / "grafana-queries.yml"
    path.write_text(yaml.safe_dump(rules))
    out = subprocess.run([_promtool(), "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
