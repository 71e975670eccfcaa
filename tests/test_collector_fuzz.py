"""Property tests (hypothesis) on both decoders: random bytes and mutated valid
payloads never crash the decoder, the store's row builder, or the collector process."""

from __future__ import annotations

import json
import random
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stagetrace.collector import otlp, store
from stagetrace.collector.process import start_collector
from stagetrace.collector.query import EmbeddedBackend

from hostile_otlp import replace_random_node

SAMPLES = Path(__file__).resolve().parent / "data" / "samples" / "input"
VALID_JSON = {otlp.TRACES: (SAMPLES / "input_traces.otlp.json").read_bytes(),
              otlp.LOGS: (SAMPLES / "input_logs.otlp.json").read_bytes()}
VALID_PB = {sig: otlp.decode(sig, body, json_body=True).SerializeToString() for sig, body in VALID_JSON.items()}
SIGNALS = st.sampled_from([otlp.TRACES, otlp.LOGS, otlp.METRICS])
TABLE = store.TABLE_OF_SIGNAL


def _mutate(data: bytes, ops: list[tuple[int, int, int]]) -> bytes:
    b = bytearray(data)
    for kind, pos, val in ops:
        if not b:
            b.append(val)
            continue
        pos %= len(b)
        if kind == 0:
            b[pos] = val  # overwrite
        elif kind == 1:
            del b[pos:pos + 1 + val % 8]  # delete
        elif kind == 2:
            b[pos:pos] = bytes([val]) * (1 + val % 4)  # insert
        else:
            b = b[:pos]  # truncate
    return bytes(b)


MUTATIONS = st.lists(st.tuples(st.integers(0, 3), st.integers(0, 1 << 20), st.integers(0, 255)), min_size=1, max_size=6)


def _exercise(signal: str, body: bytes, json_body: bool) -> None:
    """What the receiver and the block writer do with a body: must either refuse it
    as malformed or store it; any other exception is a crash."""
    try:
        req = otlp.decode(signal, body, json_body=json_body)
    except otlp.MalformedPayload:
        return
    v = otlp.validate(signal, req)
    assert v.accepted >= 0 and v.rejected >= 0
    table = store.build_table(TABLE[signal], [req.SerializeToString()])
    backend = EmbeddedBackend("/nonexistent")
    if table.num_rows and TABLE[signal] == store.SPANS:
        list(backend._spans(table))
    elif table.num_rows and TABLE[signal] == store.LOGS:
        list(backend._logs(table))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(signal=SIGNALS, body=st.binary(max_size=2048))
def test_protobuf_decoder_random_bytes(signal, body):
    _exercise(signal, body, json_body=False)


@settings(max_examples=300, deadline=None)
@given(signal=st.sampled_from([otlp.TRACES, otlp.LOGS]), ops=MUTATIONS)
def test_protobuf_decoder_mutated_valid_payloads(signal, ops):
    _exercise(signal, _mutate(VALID_PB[signal], ops), json_body=False)


@settings(max_examples=200, deadline=None)
@given(signal=SIGNALS, body=st.binary(max_size=512))
def test_json_decoder_random_bytes(signal, body):
    _exercise(signal, body, json_body=True)


@settings(max_examples=300, deadline=None)
@given(signal=st.sampled_from([otlp.TRACES, otlp.LOGS]), ops=MUTATIONS)
def test_json_decoder_mutated_valid_payloads(signal, ops):
    _exercise(signal, _mutate(VALID_JSON[signal], ops), json_body=True)


JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                           lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=12), c, max_size=4),
                           max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(signal=st.sampled_from([otlp.TRACES, otlp.LOGS]), path_seed=st.integers(0, 1 << 30), value=JSON_VALUES)
def test_json_decoder_structurally_mutated(signal, path_seed, value):
    """Replace one random node of a real OTLP/JSON document with arbitrary JSON."""
    doc = json.loads(VALID_JSON[signal])
    replace_random_node(doc, random.Random(path_seed), value)
    _exercise(signal, json.dumps(doc).encode(), json_body=True)


def test_fuzzed_bodies_never_crash_the_collector(tmp_path):
    """The same kinds of bodies, over the wire, into a real collector process."""
    rnd = random.Random(1234)
    bodies = []
    for i in range(40):
        sig = rnd.choice([otlp.TRACES, otlp.LOGS])
        if i % 4 == 0:
            bodies.append((sig, bytes(rnd.getrandbits(8) for _ in range(rnd.randint(0, 300))), False))
        elif i % 4 == 1:
            ops = [(rnd.randint(0, 3), rnd.randint(0, 10_000), rnd.randint(0, 255)) for _ in range(3)]
            bodies.append((sig, _mutate(VALID_PB[sig], ops), False))
        else:
            ops = [(rnd.randint(0, 2), rnd.randint(0, 10_000), rnd.randint(32, 126)) for _ in range(2)]
            bodies.append((sig, _mutate(VALID_JSON[sig], ops), True))
    with start_collector(tmp_path) as c:
        channel = grpc.insecure_channel(c.grpc_endpoint)
        for sig, body, is_json in bodies:
            path = {"traces": "/v1/traces", "logs": "/v1/logs"}[sig]
            req = urllib.request.Request(c.http_endpoint + path, data=body, method="POST", headers={
                "Content-Type": "application/json" if is_json else "application/x-protobuf"})
            try:
                with urllib.request.urlopen(req, timeout=30) as r:
                    status = r.status
            except urllib.error.HTTPError as e:
                status = e.code
            assert status in (200, 400), status
            if not is_json:
                svc = {"traces": "trace.v1.TraceService", "logs": "logs.v1.LogsService"}[sig]
                fn = channel.unary_unary(f"/opentelemetry.proto.collector.{svc}/Export")
                try:
                    fn(body, timeout=20)
                except grpc.RpcError as exc:
                    assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT, exc
        channel.close()
        assert c.poll() is None, c.stderr_text()
        # still healthy: a valid request is stored and readable
        req = urllib.request.Request(c.http_endpoint + "/v1/traces", data=VALID_JSON[otlp.TRACES], method="POST",
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            assert r.status == 200
            assert "rejectedSpans" not in json.loads(r.read()).get("partialSuccess", {})
        with EmbeddedBackend(c.data_dir) as b:
            assert b.get_trace("4bf92f3577b34da6a3ce929d0e0e4736") is not None
        assert "Traceback" not in c.stderr_text()
