"""stagetrace.collector: the embedded OTLP receiver and telemetry store.

Layered like Tempo, one module per layer:

- receive: :mod:`.receiver` (OTLP/gRPC + OTLP/HTTP, protobuf/JSON/gzip, limits, token)
  over :mod:`.otlp` (decode + per-record validation -> ``partial_success``);
- store: :mod:`.wal` (write-ahead log, appended before every acknowledgement) and
  :mod:`.store` (WAL segments -> sorted, immutable Parquet blocks; compaction; retention),
  :mod:`.integrity` (block checksums, verification on first open, ``collector check``) and
  :mod:`.quarantine` (the ledger of data set aside as corrupt, read by stats and reports);
- query: :mod:`.query` (:class:`~stagetrace.collector.query.EmbeddedBackend`, the
  :class:`stagetrace.backend.Backend` over a data dir), served warm by the running
  collector for bounded lookups (:mod:`.queryapi`) to readers that open the store
  through :mod:`.client` (what ``--backend embedded`` does).

Run it: ``stagetrace collector [--grpc-port 4317 --http-port 4318 --data-dir DIR --token T]``;
it prints one line when ready::

    stagetrace collector ready grpc=127.0.0.1:4317 http=127.0.0.1:4318 data_dir=/path

In tests, the demo and benchmarks, start it as a subprocess on free ports::

    from stagetrace.collector.process import start_collector
    from stagetrace.collector.query import EmbeddedBackend

    with start_collector(tmp_path) as c:          # raises CollectorStartError if it cannot start
        # OTLPSpanExporter(endpoint=c.grpc_endpoint, insecure=True)   # "127.0.0.1:PORT"
        # OTLPSpanExporter(endpoint=c.http_endpoint + "/v1/traces")    # "http://127.0.0.1:PORT"
        ...export, flush / force_flush...
        backend = EmbeddedBackend(c.data_dir)     # any process; no sleep needed:
        trace = backend.get_trace(trace_id)       # acknowledged data is readable at once
    # leaving the block sends SIGTERM (c.stop()); c.kill9() simulates a crash

Acknowledged data is in the write-ahead log before the ack, so it survives
``kill -9``; readers also read the not-yet-cut log, so nothing needs to wait.
"""
