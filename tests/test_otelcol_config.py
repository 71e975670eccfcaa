"""Static checks of the OpenTelemetry Collector configs in collector/otelcol/.

No Collector binary runs here, so these tests do what `otelcol-contrib validate`
would catch first: YAML that parses, pipelines that only name defined components,
no defined-but-unused component, component types that exist in the pinned contrib
distribution, and ${env:VAR:-default} placeholders that resolve to values of the
right type (the Collector parses a whole-scalar placeholder's value as YAML).
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

from stagetrace import semconv

OTELCOL_DIR = Path(__file__).resolve().parents[1] / "collector" / "otelcol"
BASES = ["otelcol-gateway.yaml", "otelcol-single.yaml"]
OVERLAY = "fanout-stagetrace.yaml"

PINNED_CONTRIB_VERSION = "0.136.0"

# Component modules of otelcol-contrib v0.136.0. Source: the distribution's builder
# manifest, open-telemetry/opentelemetry-collector-releases
# distributions/otelcol-contrib/manifest.yaml at commit
# 008cde8ca78cc0286ee3f0de92fa95e1641a445a (every gomod pinned at v0.136.0), copied
# as module base names. The config `type` is the module name without its kind suffix,
# except where _TYPE_EXCEPTIONS says otherwise (the factories' metadata.yaml names).
CONTRIB_MODULES = {
    "extensions": """zpagesextension ackextension asapauthextension awsproxy azureauthextension
        basicauthextension bearertokenauthextension cgroupruntimeextension datadogextension
        awscloudwatchmetricstreamsencodingextension awslogsencodingextension
        googlecloudlogentryencodingextension jaegerencodingextension jsonlogencodingextension
        otlpencodingextension skywalkingencodingextension textencodingextension
        zipkinencodingextension googleclientauthextension headerssetterextension
        healthcheckextension httpforwarderextension jaegerremotesampling oauth2clientauthextension
        dockerobserver ecsobserver ecstaskobserver hostobserver k8sobserver kafkatopicsobserver
        oidcauthextension opampextension pprofextension sigv4authextension filestorage dbstorage
        redisstorageextension sumologicextension k8sleaderelector""",
    "exporters": """debugexporter nopexporter otlpexporter otlphttpexporter
        alibabacloudlogserviceexporter awscloudwatchlogsexporter awsemfexporter awskinesisexporter
        awsxrayexporter awss3exporter azureblobexporter azuredataexplorerexporter
        azuremonitorexporter bmchelixexporter carbonexporter cassandraexporter clickhouseexporter
        coralogixexporter datadogexporter datasetexporter dorisexporter elasticsearchexporter
        faroexporter fileexporter googlecloudexporter googlecloudpubsubexporter
        googlemanagedprometheusexporter honeycombmarkerexporter influxdbexporter kafkaexporter
        loadbalancingexporter logicmonitorexporter logzioexporter mezmoexporter opensearchexporter
        otelarrowexporter prometheusexporter prometheusremotewriteexporter pulsarexporter
        rabbitmqexporter sapmexporter sentryexporter signalfxexporter splunkhecexporter
        stefexporter sumologicexporter syslogexporter tencentcloudlogserviceexporter
        tinybirdexporter zipkinexporter""",
    "processors": """batchprocessor memorylimiterprocessor attributesprocessor
        cumulativetodeltaprocessor coralogixprocessor deltatocumulativeprocessor
        deltatorateprocessor filterprocessor geoipprocessor groupbyattrsprocessor
        groupbytraceprocessor intervalprocessor isolationforestprocessor k8sattributesprocessor
        logdedupprocessor metricsgenerationprocessor metricstarttimeprocessor
        metricstransformprocessor probabilisticsamplerprocessor redactionprocessor
        remotetapprocessor resourcedetectionprocessor resourceprocessor schemaprocessor
        spanprocessor sumologicprocessor tailsamplingprocessor transformprocessor""",
    "receivers": """nopreceiver otlpreceiver activedirectorydsreceiver aerospikereceiver
        apachereceiver apachesparkreceiver awscloudwatchreceiver awscontainerinsightreceiver
        awsecscontainermetricsreceiver awsfirehosereceiver awss3receiver awsxrayreceiver
        azureblobreceiver azureeventhubreceiver azuremonitorreceiver bigipreceiver carbonreceiver
        chronyreceiver cloudflarereceiver cloudfoundryreceiver collectdreceiver couchdbreceiver
        datadogreceiver dockerstatsreceiver elasticsearchreceiver envoyalsreceiver expvarreceiver
        faroreceiver filelogreceiver filestatsreceiver flinkmetricsreceiver fluentforwardreceiver
        githubreceiver googlecloudmonitoringreceiver googlecloudpubsubreceiver
        googlecloudspannerreceiver haproxyreceiver hostmetricsreceiver httpcheckreceiver
        influxdbreceiver iisreceiver jaegerreceiver jmxreceiver journaldreceiver k8sclusterreceiver
        k8seventsreceiver k8sobjectsreceiver kafkametricsreceiver kafkareceiver kubeletstatsreceiver
        libhoneyreceiver lokireceiver memcachedreceiver mongodbatlasreceiver mongodbreceiver
        mysqlreceiver namedpipereceiver netflowreceiver nginxreceiver nsxtreceiver ntpreceiver
        oracledbreceiver otlpjsonfilereceiver otelarrowreceiver podmanreceiver postgresqlreceiver
        prometheusreceiver prometheusremotewritereceiver purefareceiver purefbreceiver
        pulsarreceiver rabbitmqreceiver receivercreator redisreceiver riakreceiver saphanareceiver
        signalfxreceiver simpleprometheusreceiver skywalkingreceiver snowflakereceiver
        solacereceiver splunkenterprisereceiver splunkhecreceiver stefreceiver sqlqueryreceiver
        sqlserverreceiver sshcheckreceiver statsdreceiver syslogreceiver tcpcheckreceiver
        tcplogreceiver tlscheckreceiver udplogreceiver vcenterreceiver wavefrontreceiver
        snmpreceiver webhookeventreceiver windowseventlogreceiver windowsperfcountersreceiver
        zipkinreceiver zookeeperreceiver""",
    "connectors": """forwardconnector countconnector datadogconnector exceptionsconnector
        failoverconnector grafanacloudconnector otlpjsonconnector roundrobinconnector
        routingconnector servicegraphconnector spanmetricsconnector sumconnector
        signaltometricsconnector""",
}
_SUFFIX = {"extensions": "extension", "exporters": "exporter", "processors": "processor",
           "receivers": "receiver", "connectors": "connector"}
# Module name -> component type, where the type is not simply the stripped module name.
_TYPE_EXCEPTIONS = {
    "memorylimiterprocessor": "memory_limiter", "tailsamplingprocessor": "tail_sampling",
    "healthcheckextension": "health_check", "probabilisticsamplerprocessor": "probabilistic_sampler",
    "filestorage": "file_storage", "dbstorage": "db_storage", "redisstorageextension": "redis_storage",
    "pprofextension": "pprof", "zpagesextension": "zpages", "k8sobserver": "k8s_observer",
    "hostobserver": "host_observer", "dockerobserver": "docker_observer",
    "receivercreator": "receiver_creator", "jaegerremotesampling": "jaegerremotesampling",
    "awsproxy": "awsproxy", "k8sleaderelector": "k8s_leader_elector",
}


def _types(kind: str) -> set[str]:
    out = set()
    for module in CONTRIB_MODULES[kind].split():
        if module in _TYPE_EXCEPTIONS:
            out.add(_TYPE_EXCEPTIONS[module])
        else:
            out.add(module[: -len(_SUFFIX[kind])] if module.endswith(_SUFFIX[kind]) else module)
    return out


CONTRIB_TYPES = {kind: _types(kind) for kind in CONTRIB_MODULES}

# --- ${env:VAR:-default} resolution, as the Collector's confmap does it ----------------

_PLACEHOLDER = re.compile(r"\$\{env:([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _resolve(node, env: dict[str, str], missing: list[str]):
    if isinstance(node, dict):
        return {k: _resolve(v, env, missing) for k, v in node.items()}
    if isinstance(node, list):
        return [_resolve(v, env, missing) for v in node]
    if not isinstance(node, str) or "${" not in node:
        return node

    def value(m: re.Match) -> str:
        name, default = m.group(1), m.group(2)
        if name in env:
            return env[name]
        if default is None:
            missing.append(name)
            return ""
        return default

    whole = _PLACEHOLDER.fullmatch(node)
    if whole:  # a whole-scalar placeholder keeps its YAML type (int, bool, ...)
        return yaml.safe_load(value(whole)) if value(whole) != "" else ""
    out = _PLACEHOLDER.sub(value, node)
    assert "${" not in out, f"unsupported placeholder syntax in {node!r}"
    return out


def _merge(base: dict, over: dict) -> dict:
    """The Collector's merge of several --config files: maps merge, other values replace."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def _raw(name: str) -> dict:
    return yaml.safe_load((OTELCOL_DIR / name).read_text())


def _configs() -> dict[str, dict]:
    out = {name: _raw(name) for name in BASES}
    for name in BASES:
        out[f"{name}+{OVERLAY}"] = _merge(_raw(name), _raw(OVERLAY))
    return out


CONFIGS = _configs()


def _resolved(cfg: dict, env: dict[str, str] | None = None) -> dict:
    missing: list[str] = []
    out = _resolve(cfg, env or {}, missing)
    assert not missing, f"placeholders without default and unset: {missing}"
    return out


def _ctype(component_id: str) -> str:
    return component_id.split("/", 1)[0]


# --- tests ----------------------------------------------------------------------------

def test_config_files_present_and_parse():
    names = sorted(p.name for p in OTELCOL_DIR.glob("*.yaml"))
    assert set(BASES + [OVERLAY]) <= set(names), names
    for name in names:
        assert isinstance(_raw(name), dict), name


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_pipelines_reference_defined_components_and_all_are_used(name):
    cfg = CONFIGS[name]
    service = cfg["service"]
    defined = {kind: set((cfg.get(kind) or {}).keys()) for kind in _SUFFIX}
    used = {kind: set() for kind in _SUFFIX}
    connectors_as_exporter, connectors_as_receiver = set(), set()
    assert service["pipelines"], "no pipelines"
    for pname, pipe in service["pipelines"].items():
        signal = pname.split("/", 1)[0]
        assert signal in ("traces", "logs", "metrics"), pname
        assert pipe.get("receivers") and pipe.get("exporters"), f"{pname}: needs receivers and exporters"
        for r in pipe["receivers"]:
            if r in defined["connectors"]:
                connectors_as_receiver.add(r)
            else:
                assert r in defined["receivers"], f"{pname}: receiver {r} is not defined"
                used["receivers"].add(r)
        for p in pipe.get("processors", []):
            assert p in defined["processors"], f"{pname}: processor {p} is not defined"
            used["processors"].add(p)
        for e in pipe["exporters"]:
            if e in defined["connectors"]:
                connectors_as_exporter.add(e)
            else:
                assert e in defined["exporters"], f"{pname}: exporter {e} is not defined"
                used["exporters"].add(e)
        procs = pipe.get("processors", [])
        assert procs and procs[0] == "memory_limiter", f"{pname}: memory_limiter must come first"
        assert "batch" in procs, f"{pname}: no batch processor"
        if "tail_sampling" in procs:
            assert procs.index("batch") > procs.index("tail_sampling"), f"{pname}: batch after tail_sampling"
    for ext in service.get("extensions", []):
        assert ext in defined["extensions"], f"extension {ext} is not defined"
        used["extensions"].add(ext)
    for kind in ("receivers", "processors", "exporters", "extensions"):
        assert defined[kind] == used[kind], f"{kind} defined but unused: {sorted(defined[kind] - used[kind])}"
    # A connector is an exporter of one pipeline and a receiver of another.
    assert defined["connectors"] == connectors_as_exporter == connectors_as_receiver, name


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_component_types_exist_in_pinned_contrib(name):
    cfg = CONFIGS[name]
    for kind in _SUFFIX:
        for cid in cfg.get(kind) or {}:
            assert _ctype(cid) in CONTRIB_TYPES[kind], (
                f"{kind[:-1]} type {_ctype(cid)!r} ({cid}) is not in otelcol-contrib {PINNED_CONTRIB_VERSION}")


def test_component_list_rejects_unknown_names():
    # The check above can fail: the deprecated `loki` exporter and a typo are not there.
    assert "loki" not in CONTRIB_TYPES["exporters"]
    assert "tailsampling" not in CONTRIB_TYPES["processors"]
    assert {"tail_sampling", "memory_limiter", "batch", "transform", "resourcedetection"} <= CONTRIB_TYPES["processors"]
    assert {"spanmetrics", "servicegraph", "forward"} <= CONTRIB_TYPES["connectors"]


def test_contrib_pin_matches_compose_image():
    compose = (OTELCOL_DIR.parents[1] / "compose" / "docker-compose.yml").read_text()
    assert f"otel/opentelemetry-collector-contrib:{PINNED_CONTRIB_VERSION}" in compose


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_env_placeholders_resolve_to_typed_defaults(name):
    text = "\n".join((OTELCOL_DIR / n).read_text() for n in name.split("+"))
    # Only the ${env:VAR:-default} form: the bare ${VAR} / ${VAR:default} forms break on contrib >= 0.123.
    for m in re.finditer(r"\$\{[^}]*\}", text):
        assert _PLACEHOLDER.fullmatch(m.group(0)), f"placeholder {m.group(0)} is not ${{env:VAR:-default}}"
    cfg = _resolved(CONFIGS[name])
    assert "${" not in yaml.safe_dump(cfg)
    for proto, ep in cfg["receivers"]["otlp"]["protocols"].items():
        host, _, port = ep["endpoint"].rpartition(":")
        assert host and port.isdigit(), (proto, ep)
    for eid, exp in cfg["exporters"].items():
        ep = exp["endpoint"]
        if _ctype(eid) == "otlp":
            assert re.fullmatch(r"[\w.-]+:\d+", ep), (eid, ep)
        else:
            u = urlparse(ep)
            assert u.scheme in ("http", "https") and u.hostname and u.port, (eid, ep)
        if "tls" in exp:
            assert isinstance(exp["tls"]["insecure"], bool), eid


def test_env_vars_override_defaults():
    env = {semconv.ENV_SLOW_THRESHOLD_MS: "750", semconv.ENV_BASELINE_SAMPLE_PERCENT: "25",
           "TEMPO_OTLP_ENDPOINT": "tempo.obs:4317", "LOKI_OTLP_ENDPOINT": "https://loki.obs:3100/otlp",
           "TEMPO_OTLP_INSECURE": "false"}
    cfg = _resolved(CONFIGS["otelcol-gateway.yaml"], env)
    policies = {p["name"]: p for p in cfg["processors"]["tail_sampling"]["policies"]}
    assert policies["slow"]["latency"]["threshold_ms"] == 750
    assert policies["baseline"]["probabilistic"]["sampling_percentage"] == 25
    assert cfg["exporters"]["otlp/tempo"]["endpoint"] == "tempo.obs:4317"
    assert cfg["exporters"]["otlp/tempo"]["tls"]["insecure"] is False
    assert cfg["exporters"]["otlphttp/loki"]["endpoint"] == "https://loki.obs:3100/otlp"
    stmts = " ".join(cfg["processors"]["transform/sampling"]["trace_statements"][0]["statements"])
    assert "Double(100) / Double(25)" in stmts


def test_gateway_tail_sampling_policies():
    cfg = _resolved(CONFIGS["otelcol-gateway.yaml"])
    ts = cfg["processors"]["tail_sampling"]
    kinds = [p["type"] for p in ts["policies"]]
    # Order matters: the first voting policy is the one recorded as tailsampling.policy.
    assert kinds == ["status_code", "latency", "probabilistic"]
    assert ts["policies"][0]["status_code"]["status_codes"] == ["ERROR"]
    assert ts["policies"][1]["latency"]["threshold_ms"] == 500
    assert 0 < ts["policies"][2]["probabilistic"]["sampling_percentage"] <= 100
    raw = (OTELCOL_DIR / "otelcol-gateway.yaml").read_text()
    assert f"threshold_ms: ${{env:{semconv.ENV_SLOW_THRESHOLD_MS}:-500}}" in raw
    assert f"sampling_percentage: ${{env:{semconv.ENV_BASELINE_SAMPLE_PERCENT}:-10}}" in raw
    # Span metrics are computed before sampling; Tempo only gets the sampled pipeline.
    pipes = cfg["service"]["pipelines"]
    assert "tail_sampling" not in pipes["traces"]["processors"]
    assert set(pipes["traces"]["exporters"]) >= {"spanmetrics", "servicegraph"}
    assert "otlp/tempo" not in pipes["traces"]["exporters"]
    assert pipes["traces/sampled"]["exporters"] == ["otlp/tempo"]


def test_single_variant_has_no_tail_sampling():
    cfg = _resolved(CONFIGS["otelcol-single.yaml"])
    assert not any(_ctype(p) == "tail_sampling" for p in cfg["processors"])
    assert "otlp/tempo" in cfg["service"]["pipelines"]["traces"]["exporters"]


@pytest.mark.parametrize("name", BASES)
def test_connectors_exporters_and_extensions(name):
    cfg = _resolved(CONFIGS[name])
    sm = cfg["connectors"]["spanmetrics"]
    dims = [d["name"] for d in sm["dimensions"]]
    assert {"ml.stage", "ml.model.name", "ml.model.version"} <= set(dims)
    assert sm["exemplars"]["enabled"] is True
    assert sm["namespace"] == "traces.span.metrics"  # -> traces_span_metrics_* (names since v0.109)
    assert sm["histogram"]["unit"] == "s"  # -> traces_span_metrics_duration_seconds_bucket
    assert "servicegraph" in cfg["connectors"]
    metrics_in = cfg["service"]["pipelines"]["metrics"]["receivers"]
    assert {"spanmetrics", "servicegraph"} <= set(metrics_in)
    exporters = cfg["exporters"]
    assert not any(_ctype(e) == "loki" for e in exporters), "the loki exporter is deprecated; use otlphttp"
    assert exporters["otlphttp/loki"]["endpoint"].endswith("/otlp")
    assert exporters["otlp/tempo"]["endpoint"].endswith(":4317")
    assert urlparse(exporters["prometheusremotewrite"]["endpoint"]).path == "/api/v1/write"
    assert cfg["service"]["extensions"] == ["health_check"]
    assert cfg["extensions"]["health_check"]["endpoint"].endswith(":13133")
    assert "otlp/stagetrace" not in exporters  # the fan-out is an opt-in overlay


@pytest.mark.parametrize("name", BASES)
def test_fanout_overlay_adds_stagetrace_without_touching_base(name):
    base = _resolved(CONFIGS[name])
    merged = _resolved(CONFIGS[f"{name}+{OVERLAY}"])
    for pname, pipe in base["service"]["pipelines"].items():
        assert merged["service"]["pipelines"][pname] == pipe
    extra = {p: v for p, v in merged["service"]["pipelines"].items() if p not in base["service"]["pipelines"]}
    assert {p.split("/")[0] for p in extra} == {"traces", "logs", "metrics"}
    assert all(v["exporters"] == ["otlp/stagetrace"] for v in extra.values())
    assert merged["exporters"]["otlp/stagetrace"]["endpoint"] == "stagetrace:4317"
    env = {"STAGETRACE_COLLECTOR_TOKEN": "s3cret"}
    hdr = _resolved(CONFIGS[f"{name}+{OVERLAY}"], env)["exporters"]["otlp/stagetrace"]["headers"]
    assert hdr["authorization"] == "Bearer s3cret"


def test_sampling_weights_use_the_shared_names():
    """transform/sampling writes the names forensics reads (stagetrace.semconv), and
    the adjusted count only on spans of the probabilistic policy."""
    cfg = _resolved(CONFIGS["otelcol-gateway.yaml"])
    names = [p["name"] for p in cfg["processors"]["tail_sampling"]["policies"] if p["type"] == "probabilistic"]
    assert names == [semconv.SAMPLING_POLICY_BASELINE]
    stmts = cfg["processors"]["transform/sampling"]["trace_statements"][0]["statements"]
    assert f'set(attributes["{semconv.TAILSAMPLING_POLICY}"], instrumentation_scope.attributes["{semconv.TAILSAMPLING_POLICY}"])' in stmts[0]
    assert stmts[1].startswith(f'set(attributes["{semconv.SAMPLING_ADJUSTED_COUNT}"], Double(100) / Double(10))')
    assert stmts[1].endswith(f'where attributes["{semconv.TAILSAMPLING_POLICY}"] == "{semconv.SAMPLING_POLICY_BASELINE}"')
    compose = (OTELCOL_DIR.parents[1] / "compose" / "docker-compose.yml").read_text()
    assert "--feature-gates=+processor.tailsamplingprocessor.recordpolicy" in compose


@pytest.mark.parametrize("name", BASES)
def test_own_metrics_reachable_by_the_compose_prometheus(name):
    cfg = _resolved(CONFIGS[name])
    reader = cfg["service"]["telemetry"]["metrics"]["readers"][0]["pull"]["exporter"]["prometheus"]
    prom = yaml.safe_load((OTELCOL_DIR.parents[1] / "compose" / "prometheus" / "prometheus.yml").read_text())
    targets = [t for job in prom["scrape_configs"] if job["job_name"] == "otelcol"
               for sc in job["static_configs"] for t in sc["targets"]]
    assert reader["host"] == "0.0.0.0" and targets == [f"otelcol:{reader['port']}"]


@pytest.mark.parametrize("name", BASES)
def test_model_profiles_survive_attribute_truncation(name):
    """truncate_all cuts every string attribute at 4 KiB; a cut profile would not decode.
    No Collector runs here, so this checks the statement order (cache, truncate, restore,
    drop above the bound) with the names forensics reads (stagetrace.semconv)."""
    stmts = _resolved(CONFIGS[name])["processors"]["transform"]["trace_statements"][0]["statements"]
    cut = next(i for i, s in enumerate(stmts) if s.startswith("truncate_all(attributes,"))
    for key in (semconv.ML_INPUT_PROFILE, semconv.ML_OUTPUT_PROFILE):
        saved = f'set(cache["{key}"], attributes["{key}"])'
        restored = f'set(attributes["{key}"], cache["{key}"]) where cache["{key}"] != nil'
        dropped = f'delete_key(attributes, "{key}") where Len(attributes["{key}"]) > 65536'
        assert stmts.index(saved) < cut < stmts.index(restored) < stmts.index(dropped), stmts
