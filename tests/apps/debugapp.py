"""Two small services with no tracing code, for per-request debug logging.

Run by tests/test_debug_logging.py as ``opentelemetry-instrument uvicorn debugapp:app``
twice: the edge (``DEBUGAPP_DOWNSTREAM`` set: it calls the other one with ``requests``)
and the downstream service. Each logs one INFO and one DEBUG line per request; its
logger is at INFO, so the DEBUG line appears only when per-request debug turns it on.
"""

import logging
import os

import requests
from fastapi import FastAPI

NAME = os.environ.get("DEBUGAPP_NAME", "svc")
DOWNSTREAM = os.environ.get("DEBUGAPP_DOWNSTREAM")

log = logging.getLogger("debugapp")
log.setLevel(logging.INFO)
app = FastAPI()


@app.get("/health")
def health() -> dict:
    return {"ok": True}


@app.get("/call/{item}")
def work(item: int) -> dict:
    log.debug("debug detail from %s for item %s", NAME, item)
    log.info("handled item %s in %s", item, NAME)
    down = None
    if DOWNSTREAM:
        down = requests.get(f"{DOWNSTREAM}/call/{item}", timeout=30).json()
    return {"item": item, "service": NAME, "debug_enabled": log.isEnabledFor(logging.DEBUG), "downstream": down}
