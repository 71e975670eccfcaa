"""TLS on both OTLP receivers and the query endpoint (issue 11), with the real OTel SDK
exporters and the CLI reading through the TLS query endpoint. The test makes its own
self-signed certificate with the openssl command line."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time

import grpc
import pytest
from opentelemetry._logs import LogRecord as ApiLogRecord
from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter as GrpcLogExporter
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpanExporter
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter as HttpLogExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpanExporter
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, LogRecordExportResult, SimpleLogRecordProcessor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from stagetrace.backend import LogQuery, TraceQuery
from stagetrace.collector.client import ServedBackend, open_embedded
from stagetrace.collector.process import start_collector
from stagetrace.collector.query import EmbeddedBackend

TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def cert(tmp_path_factory):
    openssl = shutil.which("openssl")
    if openssl is None:
        if os.environ.get("CI"):
            pytest.fail("the openssl command line is needed to make the test certificate")
        pytest.skip("no openssl command line")
    d = tmp_path_factory.mktemp("tls")
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-keyout", str(d / "key.pem"), "-out", str(d / "cert.pem"), "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True)
    return d / "cert.pem", d / "key.pem"


def _spans(tag: str, n: int = 5):
    mem = InMemorySpanExporter()
    tp = TracerProvider(resource=Resource.create({"service.name": "tls"}))
    tp.add_span_processor(SimpleSpanProcessor(mem))
    for i in range(n):
        with tp.get_tracer("t").start_as_current_span(f"{tag}-{i}"):
            pass
    tp.shutdown()
    return mem.get_finished_spans()


def _logs(body: str):
    mem = InMemoryLogRecordExporter()
    lp = LoggerProvider(resource=Resource.create({"service.name": "tls"}))
    lp.add_log_record_processor(SimpleLogRecordProcessor(mem))
    lp.get_logger("t").emit(ApiLogRecord(timestamp=time.time_ns(), body=body, severity_text="INFO"))
    lp.shutdown()
    return mem.get_finished_logs()


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stagetrace.cli", *args], capture_output=True, text=True,
                          timeout=120, env=dict(os.environ, **(env or {})))


def test_sdk_exporters_and_the_cli_over_tls(tmp_path, cert, monkeypatch):
    cert_file, key_file = cert
    # requests lets REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE (set on some machines, CI included)
    # override the session's CA file, i.e. the HTTP exporter's certificate_file (psf/requests#3829)
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    pem = cert_file.read_bytes()
    auth = {"authorization": f"Bearer {TOKEN}"}
    c = start_collector(tmp_path / "data", token=TOKEN,
                        extra_args=["--tls-cert-file", str(cert_file), "--tls-key-file", str(key_file)])
    with c:
        creds = grpc.ssl_channel_credentials(root_certificates=pem)
        grpc_spans, http_spans = _spans("grpc"), _spans("http")
        g = GrpcSpanExporter(endpoint=f"https://{c.grpc_endpoint}", credentials=creds, headers=auth)
        h = HttpSpanExporter(endpoint=f"https://127.0.0.1:{c.http_port}/v1/traces", certificate_file=str(cert_file),
                             headers=auth)
        assert g.export(grpc_spans) == SpanExportResult.SUCCESS
        assert h.export(http_spans) == SpanExportResult.SUCCESS
        gl = GrpcLogExporter(endpoint=f"https://{c.grpc_endpoint}", credentials=creds, headers=auth)
        hl = HttpLogExporter(endpoint=f"https://127.0.0.1:{c.http_port}/v1/logs", certificate_file=str(cert_file),
                             headers=auth)
        assert gl.export(_logs("over grpc+tls")) == LogRecordExportResult.SUCCESS
        assert hl.export(_logs("over https")) == LogRecordExportResult.SUCCESS
        for exp in (g, h, gl, hl):
            exp.shutdown()

        # plain text on the TLS ports is refused, never stored
        plain = GrpcSpanExporter(endpoint=c.grpc_endpoint, insecure=True, headers=auth, timeout=2)
        assert plain.export(_spans("plain")) != SpanExportResult.SUCCESS
        plain.shutdown()
        with socket.create_connection(("127.0.0.1", c.http_port), timeout=5) as s:
            s.sendall(b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
            try:
                answer = s.recv(100)
            except ConnectionResetError:  # the TLS handshake failed and the server hung up
                answer = b""
            assert not answer.startswith(b"HTTP/1.1")

        info = json.loads((c.data_dir / "collector.json").read_text())
        assert info["url"].startswith("https://") and info["ca_file"] == str(cert_file.resolve())

        # the CLI, reading through the TLS query endpoint: given a copy of the data dir that
        # holds only the discovery file, a served answer is the only way to find the trace
        probe = tmp_path / "probe"
        probe.mkdir()
        shutil.copy(c.data_dir / "collector.json", probe / "collector.json")
        tid = format(grpc_spans[0].context.trace_id, "032x")
        r = _cli("trace", tid, "--data-dir", str(probe), "--format", "json", env={"STAGETRACE_TOKEN": TOKEN})
        assert r.returncode == 0, r.stderr
        assert tid in r.stdout and "grpc-0" in r.stdout
        monkeypatch.setenv("STAGETRACE_TOKEN", TOKEN)
        b = open_embedded(c.data_dir)
        assert isinstance(b, ServedBackend)
        assert b.stats()["spans"] == 10 and b._served  # answered over https, no fallback
        b.close()

    with EmbeddedBackend(tmp_path / "data") as b:
        names = {s.name for s in b.find_spans(TraceQuery(service="tls", limit=None))}
        assert names == {f"{p}-{i}" for p in ("grpc", "http") for i in range(5)}
        assert sorted(r.body for r in b.find_logs(LogQuery(service="tls"))) == ["over grpc+tls", "over https"]


def test_a_reader_that_does_not_trust_the_certificate_falls_back_to_the_store(tmp_path, cert):
    cert_file, key_file = cert
    with start_collector(tmp_path / "data",
                         extra_args=["--tls-cert-file", str(cert_file), "--tls-key-file", str(key_file)]) as c:
        b = ServedBackend(c.data_dir, f"https://127.0.0.1:{c.http_port}")  # no ca_file: system CAs only
        assert b.stats()["spans"] == 0
        assert not b._served  # the handshake failed; the store was read here instead
        b.close()


def test_token_on_a_remote_address_needs_tls(tmp_path, cert):
    cert_file, key_file = cert
    r = _cli("collector", "--host", "0.0.0.0", "--allow-remote", "--token", TOKEN, "--data-dir", str(tmp_path))
    assert r.returncode == 2
    [line] = r.stderr.strip().splitlines()
    assert "without TLS" in line and "--insecure" in line
    r = _cli("collector", "--tls-cert-file", str(cert_file), "--data-dir", str(tmp_path))
    assert r.returncode == 2 and "--tls-key-file" in r.stderr and "Traceback" not in r.stderr
    r = _cli("collector", "--tls-cert-file", str(key_file), "--tls-key-file", str(key_file),
             "--grpc-port", "0", "--http-port", "0", "--data-dir", str(tmp_path))
    assert r.returncode == 2 and "TLS certificate" in r.stderr and "Traceback" not in r.stderr
    # --insecure (or TLS) passes the check; 192.0.2.1 (TEST-NET-1) is not ours, so the
    # listen then fails without this test ever exposing a port
    for extra in (["--insecure"], ["--tls-cert-file", str(cert_file), "--tls-key-file", str(key_file)]):
        r = _cli("collector", "--host", "192.0.2.1", "--allow-remote", "--token", TOKEN, "--grpc-port", "0",
                 "--http-port", "0", "--data-dir", str(tmp_path), *extra)
        assert r.returncode == 2 and "cannot listen" in r.stderr, r.stderr
